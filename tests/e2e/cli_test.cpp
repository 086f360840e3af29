// The command line of `ferry serve` and `ferry consume`: help, and bad arguments.
#include <gtest/gtest.h>

#include <algorithm>

#include "e2e_support.hpp"

namespace ferry::e2e {
namespace {

std::size_t lines(const std::string& text) {
  return static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
}

TEST(Cli, HelpWorksForServeAndConsume) {
  TempDir dir;
  auto serve = run_ferry({"serve", "--help"}, dir.path().string());
  EXPECT_EQ(serve.exit_code, 0);
  for (const char* flag : {"--listen", "--broker", "--threads", "--no-processor", "--store", "--shutdown-timeout"})
    EXPECT_NE(serve.output.find(flag), std::string::npos) << flag << " missing from\n" << serve.output;
  auto consume = run_ferry({"consume", "--help"}, dir.path().string());
  EXPECT_EQ(consume.exit_code, 0);
  for (const char* flag : {"--broker", "--store", "--concurrency"})
    EXPECT_NE(consume.output.find(flag), std::string::npos) << flag << " missing from\n" << consume.output;
}

TEST(Cli, BadArgumentsExitTwoWithOneLine) {
  TempDir dir;
  const std::vector<std::vector<std::string>> cases = {
      {"serve", "--bogus"},
      {"serve", "--broker", "nope://somewhere"},
      {"serve", "--broker", "nosuchscheme://user:hunter2@localhost:9092"},
      {"serve", "--listen", "localhost"},
      {"serve", "--listen", "127.0.0.1:99999"},
      {"serve", "--threads", "many"},
      {"serve", "--broker", "a=sqlite://x.db", "--broker", "a=sqlite://y.db"},
      {"serve", "--shutdown-timeout", "-1"},
      {"consume", "--concurrency", "0"},
      {"consume", "--broker", "sqlite://"},
  };
  for (const auto& args : cases) {
    auto r = run_ferry(args, dir.path().string());
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_EQ(r.exit_code, 2) << joined << "\n" << r.output;
    EXPECT_EQ(lines(r.output), 1u) << joined << "\n" << r.output;
    EXPECT_EQ(r.output.find("hunter2"), std::string::npos) << "password printed: " << r.output;
  }
}

}  // namespace
}  // namespace ferry::e2e
