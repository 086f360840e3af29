// sqlite:// across processes: kill -9 of a publisher loses nothing it confirmed; a
// consumer killed mid-message has that message redelivered after its lease; consumers in
// several processes share a group; another process's publish wakes a waiting consumer;
// bad URLs, options and foreign files fail with one clear line and change nothing.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "ferry/backends/sqlite.hpp"
#include "ferry/broker.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "ferry-robust-XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  fs::path path() const { return path_; }

 private:
  fs::path path_;
};

// Reads lines a child writes to a pipe.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd) {}
  // The next line, or nothing at end of input or after `timeout`.
  std::optional<std::string> next(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      fd_set set;
      FD_ZERO(&set);
      FD_SET(fd_, &set);
      timeval tv{static_cast<time_t>(left.count() / 1000), static_cast<suseconds_t>((left.count() % 1000) * 1000)};
      if (select(fd_ + 1, &set, nullptr, nullptr, &tv) <= 0) continue;
      char chunk[4096];
      ssize_t n = read(fd_, chunk, sizeof chunk);
      if (n <= 0) return std::nullopt;
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }

 private:
  int fd_;
  std::string buffer_;
};

void write_line(int fd, const std::string& line) {
  std::string out = line + "\n";
  [[maybe_unused]] auto n = write(fd, out.data(), out.size());
}

// Runs `body(write_fd)` in a child process; returns its pid and the read end of its pipe.
template <typename Body>
std::pair<pid_t, int> spawn(Body body) {
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    try {
      body(fds[1]);
    } catch (const std::exception& e) {
      write_line(fds[1], std::string("error ") + e.what());
      _exit(3);
    }
    _exit(0);
  }
  close(fds[1]);
  return {pid, fds[0]};
}

int wait_exit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::set<std::string> drain(ferry::Broker& broker, const std::string& topic, const std::string& group,
                            std::size_t expected, std::chrono::milliseconds timeout) {
  auto sub = broker.subscribe({.topic = topic, .group = group});
  std::set<std::string> ids;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (ids.size() < expected && std::chrono::steady_clock::now() < deadline) {
    auto d = sub->receive(200ms);
    if (!d) continue;
    ids.insert(d->message().id);
    d->ack();
  }
  // Anything beyond the expected set would show up now.
  while (auto d = sub->receive(300ms)) {
    ids.insert(d->message().id);
    d->ack();
  }
  return ids;
}

struct CommandResult {
  int code = -1;
  std::string out;
  std::string err;
};

CommandResult run_ferry(const std::string& args) {
  TempDir tmp;
  std::string cmd = std::string(FERRY_BINARY) + " " + args + " >" + (tmp.path() / "out").string() + " 2>" +
                    (tmp.path() / "err").string();
  int status = std::system(cmd.c_str());
  CommandResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  r.out = slurp(tmp.path() / "out");
  r.err = slurp(tmp.path() / "err");
  return r;
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class SqliteProcessTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ferry::sqlite::register_scheme(); }
  std::string url() const { return "sqlite://" + (dir_.path() / "ferry.db").string(); }
  TempDir dir_;
};

TEST_F(SqliteProcessTest, KillNineOfPublisherLosesNothingConfirmed) {
  auto [pid, fd] = spawn([url = url()](int out) {
    auto broker = ferry::Broker::open(url);
    std::atomic<int> in_flight{0};
    for (int i = 0;; ++i) {
      while (in_flight.load() > 200) std::this_thread::sleep_for(100us);
      ++in_flight;
      ferry::Message m = ferry::Message::with_payload("payload " + std::to_string(i));
      std::string id = m.id;
      broker->publisher().publish_async("crash", std::move(m), [out, id, &in_flight](const ferry::Status& s) {
        if (s.ok()) write_line(out, id);
        --in_flight;
      });
    }
  });
  LineReader reader(fd);
  std::set<std::string> confirmed;
  while (confirmed.size() < 3000) {
    auto line = reader.next(10s);
    ASSERT_TRUE(line) << "the publishing child stopped after " << confirmed.size() << " confirmations";
    ASSERT_NE(line->rfind("error", 0), 0u) << *line;
    confirmed.insert(*line);
  }
  kill(pid, SIGKILL);
  EXPECT_EQ(wait_exit(pid), 128 + SIGKILL);
  while (auto line = reader.next(100ms)) confirmed.insert(*line);  // confirmations already in the pipe
  close(fd);

  auto broker = ferry::Broker::open(url());
  auto received = drain(*broker, "crash", "verify", confirmed.size(), 30s);
  for (const auto& id : confirmed) ASSERT_TRUE(received.count(id)) << "confirmed message " << id << " was lost";
}

TEST_F(SqliteProcessTest, ConsumerKilledMidMessageIsRedeliveredAfterLease) {
  auto broker = ferry::Broker::open(url());
  auto message = ferry::Message::with_payload("work");
  broker->publisher().publish("jobs", message);

  auto [pid, fd] = spawn([url = url()](int out) {
    auto child = ferry::Broker::open(url);
    auto sub = child->subscribe({.topic = "jobs", .group = "workers", .prefetch = 1, .ack_timeout = 1500ms});
    auto d = sub->receive(10s);
    if (!d) return write_line(out, "none");
    write_line(out, d->message().id + " " + std::to_string(d->attempt()));
    pause();  // "working" until killed
  });
  LineReader reader(fd);
  auto line = reader.next(10s);
  ASSERT_TRUE(line);
  EXPECT_EQ(*line, message.id + " 1");
  auto killed_at = std::chrono::steady_clock::now();
  kill(pid, SIGKILL);
  wait_exit(pid);
  close(fd);

  auto sub = broker->subscribe({.topic = "jobs", .group = "workers", .ack_timeout = 1500ms});
  auto d = sub->receive(10s);
  ASSERT_TRUE(d) << "the killed consumer's message never came back";
  EXPECT_EQ(d->message().id, message.id);
  EXPECT_EQ(d->message().payload, "work");
  EXPECT_EQ(d->attempt(), 2);
  // Not before the lease the dead consumer held ran out (it started before the kill).
  EXPECT_GE(std::chrono::steady_clock::now() - killed_at, 500ms);
  d->ack();
  EXPECT_FALSE(sub->receive(300ms)) << "an acked message came back";
}

TEST_F(SqliteProcessTest, ConsumersInTwoProcessesShareAGroup) {
  constexpr int kMessages = 1000;
  {  // the group exists before publishing, so both children see the same backlog
    auto broker = ferry::Broker::open(url());
    broker->subscribe({.topic = "shared", .group = "g"})->close();
  }
  auto consumer = [url = url()](int out) {
    auto broker = ferry::Broker::open(url);
    auto sub = broker->subscribe({.topic = "shared", .group = "g", .prefetch = 8});
    auto idle_since = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - idle_since < 2s) {
      auto d = sub->receive(100ms);
      if (!d) continue;
      write_line(out, d->message().id);
      std::this_thread::sleep_for(200us);  // some work, so that neither child drains alone
      d->ack();
      idle_since = std::chrono::steady_clock::now();
    }
  };
  auto [pid1, fd1] = spawn(consumer);
  auto [pid2, fd2] = spawn(consumer);
  auto broker = ferry::Broker::open(url());
  std::vector<ferry::Message> batch;
  std::set<std::string> published;
  for (int i = 0; i < kMessages; ++i) {
    batch.push_back(ferry::Message::with_payload(std::to_string(i)));
    published.insert(batch.back().id);
    if (batch.size() == 50) {
      broker->publisher().publish_batch("shared", std::move(batch));
      batch.clear();
    }
  }
  std::multiset<std::string> seen;
  std::array<int, 2> per_child{0, 0};
  LineReader r1(fd1), r2(fd2);
  for (auto [reader, index] : {std::pair{&r1, 0}, std::pair{&r2, 1}}) {
    while (auto line = reader->next(30s)) {
      seen.insert(*line);
      ++per_child[static_cast<std::size_t>(index)];
    }
  }
  EXPECT_EQ(wait_exit(pid1), 0);
  EXPECT_EQ(wait_exit(pid2), 0);
  close(fd1);
  close(fd2);
  EXPECT_EQ(seen.size(), published.size()) << "a message was processed twice or lost";
  for (const auto& id : published) EXPECT_EQ(seen.count(id), 1u);
  EXPECT_GT(per_child[0], 0) << "the first process got no share";
  EXPECT_GT(per_child[1], 0) << "the second process got no share";
}

TEST_F(SqliteProcessTest, PublishFromAnotherProcessWakesAWaitingConsumer) {
  auto broker = ferry::Broker::open(url());
  auto sub = broker->subscribe({.topic = "wake", .group = "g"});
  EXPECT_FALSE(sub->receive(50ms));
  auto [pid, fd] = spawn([url = url()](int out) {
    auto child = ferry::Broker::open(url);
    for (int i = 0; i < 10; ++i) {
      std::this_thread::sleep_for(100ms);
      auto m = ferry::Message::with_payload(std::to_string(i));
      m.headers["sent-ns"] = std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
      child->publisher().publish("wake", std::move(m));
    }
    write_line(out, "done");
  });
  std::vector<double> delays_ms;
  while (delays_ms.size() < 10) {
    auto d = sub->receive(5s);
    ASSERT_TRUE(d) << "a publish from another process did not wake the consumer";
    auto sent = std::stoll(d->message().headers.at("sent-ns"));
    delays_ms.push_back(static_cast<double>(std::chrono::steady_clock::now().time_since_epoch().count() - sent) / 1e6);
    d->ack();
  }
  EXPECT_EQ(wait_exit(pid), 0);
  close(fd);
  std::sort(delays_ms.begin(), delays_ms.end());
  // Woken by the other process's commit, not by a periodic poll (which would take up to a second).
  EXPECT_LT(delays_ms[delays_ms.size() / 2], 300.0) << "median cross-process wake-up";
}

TEST_F(SqliteProcessTest, ForeignFilesAndBadUrlsFailWithOneLineAndChangeNothing) {
  fs::path text_file = dir_.path() / "notes.txt";
  {
    std::ofstream out(text_file);
    out << "these are not ferry's messages\n";
  }
  std::string before = file_bytes(text_file);
  CommandResult r = run_ferry("stats --broker sqlite://" + text_file.string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("is not a ferry database"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(file_bytes(text_file), before) << "the foreign file was modified";
  EXPECT_FALSE(fs::exists(text_file.string() + "-wal"));

  // Another program's SQLite database.
  fs::path other = dir_.path() / "other.db";
  {
    std::string cmd = "sqlite3 " + other.string() + " 'CREATE TABLE accounts(id INTEGER, balance INTEGER);" +
                      " INSERT INTO accounts VALUES (1, 100);'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  std::string other_before = file_bytes(other);
  r = run_ferry("publish --broker sqlite://" + other.string() + " --topic t hello");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("ferry did not create"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(file_bytes(other), other_before) << "another program's database was modified";

  r = run_ferry("stats --broker 'sqlite://" + (dir_.path() / "x.db").string() + "?sync=sometimes'");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("sync"), std::string::npos) << r.err;
  r = run_ferry("stats --broker 'sqlite://" + (dir_.path() / "x.db").string() + "?colour=blue'");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown sqlite option 'colour'"), std::string::npos) << r.err;
  r = run_ferry("stats --broker 'nosuch://host'");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("no backend for 'nosuch://'"), std::string::npos) << r.err;
  r = run_ferry("stats --broker 'amqp://guest:hunter2@localhost:99999/'");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err.find("hunter2"), std::string::npos) << "a password was printed: " << r.err;
  r = run_ferry("publish --broker sqlite://" + (dir_.path() / "y.db").string() + " --topic 'bad topic' x");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("is not a valid topic"), std::string::npos) << r.err;
  r = run_ferry("bench --messages 0");
  EXPECT_EQ(r.code, 2);
  r = run_ferry("publish --no-such-flag");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST_F(SqliteProcessTest, CommandLineToolsRoundTrip) {
  std::string broker = "--broker sqlite://" + (dir_.path() / "tools.db").string();
  ASSERT_EQ(run_ferry("publish " + broker + " --topic orders -k k1 -H a=b one two").code, 0);
  {
    auto b = ferry::Broker::open("sqlite://" + (dir_.path() / "tools.db").string());
    auto sub = b->subscribe({.topic = "orders", .group = "g"});
    auto d = sub->receive(5s);
    ASSERT_TRUE(d);
    EXPECT_EQ(d->message().payload, "one");
    EXPECT_EQ(d->message().key.value_or(""), "k1");
    EXPECT_EQ(d->message().headers.at("a"), "b");
    d->reject("cannot handle one");
  }
  CommandResult stats = run_ferry("stats --json " + broker);
  ASSERT_EQ(stats.code, 0) << stats.err;
  EXPECT_NE(stats.out.find("\"orders.g.dlq\""), std::string::npos) << stats.out;
  CommandResult list = run_ferry("dlq list " + broker + " --topic orders.g.dlq");
  ASSERT_EQ(list.code, 0) << list.err;
  EXPECT_NE(list.out.find("cannot handle one"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("from orders after 1 attempt"), std::string::npos) << list.out;
  CommandResult replay = run_ferry("dlq replay " + broker + " --topic orders.g.dlq");
  ASSERT_EQ(replay.code, 0) << replay.err;
  EXPECT_NE(replay.err.find("replayed 1 message"), std::string::npos) << replay.err;
  {
    auto b = ferry::Broker::open("sqlite://" + (dir_.path() / "tools.db").string());
    auto sub = b->subscribe({.topic = "orders", .group = "g"});
    std::multiset<std::string> payloads;
    while (auto d = sub->receive(500ms)) {
      payloads.insert(d->message().payload);
      EXPECT_EQ(d->message().headers.count("ferry-error"), 0u);
      d->ack();
    }
    EXPECT_EQ(payloads, (std::multiset<std::string>{"one", "two"}));
  }
  ASSERT_EQ(run_ferry("publish " + broker + " --topic orders.g.dlq poison").code, 0);
  CommandResult purge = run_ferry("dlq purge " + broker + " --topic orders.g.dlq");
  ASSERT_EQ(purge.code, 0) << purge.err;
  CommandResult after = run_ferry("dlq list " + broker + " --topic orders.g.dlq");
  EXPECT_NE(after.err.find("0 dead letter(s)"), std::string::npos) << after.err;
}

}  // namespace
