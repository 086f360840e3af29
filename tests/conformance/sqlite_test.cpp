// sqlite:// joins the conformance suite: each case gets a database file in a directory of
// its own; a restart closes the broker and opens the file again.

#include <filesystem>

#include "conformance.hpp"
#include "ferry/backends/sqlite.hpp"

namespace {

std::string make_sqlite_url() {
  auto dir = std::filesystem::temp_directory_path() / ferry::testing::unique_name("ferry-conformance");
  std::filesystem::create_directories(dir);
  return "sqlite://" + (dir / "ferry.db").string();
}

void remove_sqlite_dir(const std::string& url) {
  std::filesystem::path file(url.substr(std::string("sqlite://").size()));
  std::filesystem::remove_all(file.parent_path());
}

}  // namespace

FERRY_CONFORMANCE_BACKEND(sqlite, ferry::testing::BackendSpec{
                                      .name = "sqlite",
                                      .register_scheme = ferry::sqlite::register_scheme,
                                      .make_url = make_sqlite_url,
                                      .restart = ferry::testing::reopen,
                                      .cleanup = remove_sqlite_dir,
                                  });
