#include "ferry/broker.hpp"

#include <map>
#include <mutex>

namespace ferry {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, Broker::Factory> factories;
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void Broker::register_scheme(const std::string& scheme, Factory factory) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  r.factories[scheme] = std::move(factory);
}

std::vector<std::string> Broker::schemes() {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  std::vector<std::string> out;
  for (const auto& [name, _] : r.factories) out.push_back(name);
  return out;
}

std::shared_ptr<Broker> Broker::open(std::string_view text) {
  Url url = Url::parse(text);
  Factory factory;
  {
    auto& r = registry();
    std::lock_guard lock(r.mutex);
    auto it = r.factories.find(url.scheme());
    if (it != r.factories.end()) factory = it->second;
  }
  if (!factory) {
    std::string known;
    for (const auto& s : schemes()) known += (known.empty() ? "" : ", ") + s;
    throw Error(Errc::unknown_scheme, "no backend for '" + url.scheme() + "://' in " + url.masked() +
                                          "; known schemes: " + (known.empty() ? "none registered" : known));
  }
  return factory(url);
}

}  // namespace ferry
