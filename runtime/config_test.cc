#include "runtime/config.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "runtime/log.h"

namespace doorway::runtime {
namespace {

TEST(Config, Defaults) {
  const char* env[] = {"PATH=/bin", nullptr};
  Config c = ParseConfig(env);
  EXPECT_FALSE(c.disabled);
  EXPECT_TRUE(c.accelerate);
  EXPECT_EQ(c.log_level, LogLevel::kOff);
  EXPECT_EQ(c.log_file, nullptr);
  EXPECT_FALSE(ParseConfig(nullptr).disabled);
}

TEST(Config, Values) {
  const char* env[] = {"DOORWAY_DISABLE=1",    "DOORWAY_LOG=debug",  "DOORWAY_LOG_FILE=/tmp/x",
                       "DOORWAY_ACCELERATE=0", "DOORWAY_DISABLEX=0", nullptr};
  Config c = ParseConfig(env);
  EXPECT_TRUE(c.disabled);
  EXPECT_FALSE(c.accelerate);
  EXPECT_EQ(c.log_level, LogLevel::kDebug);
  EXPECT_STREQ(c.log_file, "/tmp/x");
}

TEST(Config, DoorSettings) {
  const char* env[] = {"DOORWAY_DIR=/run/shared/doors", "DOORWAY_ALLOW_UIDS=1000,2001", nullptr};
  Config c = ParseConfig(env);
  EXPECT_STREQ(c.door_dir, "/run/shared/doors");
  ASSERT_EQ(c.allowed_uid_count, 2);
  EXPECT_EQ(c.allowed_uids[0], 1000u);
  EXPECT_EQ(c.allowed_uids[1], 2001u);
  const char* bad[] = {"DOORWAY_DIR=relative", "DOORWAY_ALLOW_UIDS=12,x", nullptr};
  Config b = ParseConfig(bad);
  EXPECT_EQ(b.door_dir, nullptr);
  EXPECT_EQ(b.allowed_uid_count, 0);
}

TEST(Config, AsymmetricFence) {
  const char* unset[] = {"PATH=/bin", nullptr};
  EXPECT_TRUE(ParseConfig(unset).asymmetric_fence);
  const char* off[] = {"DOORWAY_ASYMMETRIC_FENCE=0", nullptr};
  EXPECT_FALSE(ParseConfig(off).asymmetric_fence);
  const char* bad[] = {"DOORWAY_ASYMMETRIC_FENCE=maybe", nullptr};
  Config b = ParseConfig(bad);
  EXPECT_TRUE(b.asymmetric_fence);
  EXPECT_EQ(b.reported_count, 1);
}

TEST(Config, SpinBudget) {
  const char* unset[] = {"PATH=/bin", nullptr};
  EXPECT_EQ(ParseConfig(unset).spin_ns, -1);
  const char* zero[] = {"DOORWAY_SPIN_NS=0", nullptr};
  EXPECT_EQ(ParseConfig(zero).spin_ns, 0);
  const char* some[] = {"DOORWAY_SPIN_NS=200000", nullptr};
  EXPECT_EQ(ParseConfig(some).spin_ns, 200000);
  for (const char* bad :
       {"DOORWAY_SPIN_NS=-1", "DOORWAY_SPIN_NS=5us", "DOORWAY_SPIN_NS=2000000000"}) {
    const char* env[] = {bad, nullptr};
    EXPECT_EQ(ParseConfig(env).spin_ns, -1) << bad;
  }
}

TEST(Config, FallbackMode) {
  const char* none[] = {nullptr};
  EXPECT_EQ(ParseConfig(none).fallback, FallbackMode::kPassthrough);
  const char* uring[] = {"DOORWAY_FALLBACK=uring", nullptr};
  EXPECT_EQ(ParseConfig(uring).fallback, FallbackMode::kUring);
  const char* pass[] = {"DOORWAY_FALLBACK=passthrough", nullptr};
  EXPECT_EQ(ParseConfig(pass).fallback, FallbackMode::kPassthrough);
  const char* sqpoll[] = {"DOORWAY_FALLBACK=uring-sqpoll", nullptr};
  EXPECT_EQ(ParseConfig(sqpoll).fallback, FallbackMode::kUringSqpoll);
  const char* bad[] = {"DOORWAY_FALLBACK=epoll", nullptr};
  EXPECT_EQ(ParseConfig(bad).fallback, FallbackMode::kPassthrough);
}

TEST(Config, BadValuesFallBackToDefaults) {
  const char* env[] = {"DOORWAY_DISABLE=maybe", "DOORWAY_LOG=loud", nullptr};
  Config c = ParseConfig(env);
  EXPECT_FALSE(c.disabled);
  EXPECT_EQ(c.log_level, LogLevel::kOff);
}

TEST(Config, StatsMode) {
  const char* none[] = {nullptr};
  EXPECT_EQ(ParseConfig(none).stats, StatsMode::kOn);
  const char* off[] = {"DOORWAY_STATS=off", nullptr};
  EXPECT_EQ(ParseConfig(off).stats, StatsMode::kOff);
  const char* zero[] = {"DOORWAY_STATS=0", nullptr};
  EXPECT_EQ(ParseConfig(zero).stats, StatsMode::kOff);
  const char* exit_mode[] = {"DOORWAY_STATS=exit", nullptr};
  EXPECT_EQ(ParseConfig(exit_mode).stats, StatsMode::kExit);
  const char* bad[] = {"DOORWAY_STATS=sometimes", nullptr};
  EXPECT_EQ(ParseConfig(bad).stats, StatsMode::kOn);
}

// What RawLog writes while fn runs (the log fd pointed at a pipe).
template <typename Fn>
std::string CaptureLog(Fn fn) {
  int p[2];
  EXPECT_EQ(pipe2(p, O_NONBLOCK), 0);
  int saved = g_log_fd.exchange(p[1]);
  fn();
  g_log_fd.store(saved);
  close(p[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(p[0], buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  close(p[0]);
  return out;
}

// Drops the "doorway[pid]: " prefixes.
std::string Messages(const std::string& log) {
  std::istringstream in(log);
  std::string line, out;
  while (std::getline(in, line)) {
    size_t p = line.find("]: ");
    EXPECT_TRUE(line.rfind("doorway[", 0) == 0 && p != std::string::npos) << line;
    if (p == std::string::npos) continue;
    out += line.substr(p + 3) + "\n";
  }
  return out;
}

TEST(Config, EachBadValueReportedOnceWithTheDefault) {
  const char* env[] = {"DOORWAY_DISABLE=maybe",
                       "DOORWAY_ACCELERATE=2",
                       "DOORWAY_LOG=loud",
                       "DOORWAY_DIR=doors",
                       "DOORWAY_ALLOW_UIDS=12,x",
                       "DOORWAY_FALLBACK=epoll",
                       "DOORWAY_STATS=sometimes",
                       "DOORWAY_LOGG=debug",
                       "DOORWAY_INHERIT=",
                       "DOORWAY_PRELOAD_SO=/x.so",
                       "PATH=/bin",
                       nullptr};
  Config c;
  std::string log = CaptureLog([&] { c = ParseConfig(env); });
  // The messages docs/configuration.md documents, word for word.
  EXPECT_EQ(Messages(log),
            "DOORWAY_DISABLE=maybe is not 1|0|yes|no|true|false; using 0\n"
            "DOORWAY_ACCELERATE=2 is not 1|0|yes|no|true|false; using 1\n"
            "DOORWAY_LOG=loud is not off|error|warn|info|debug; using off\n"
            "DOORWAY_DIR=doors is not an absolute path; using the default\n"
            "DOORWAY_ALLOW_UIDS=12,x is not a comma-separated list of uids; using none\n"
            "DOORWAY_FALLBACK=epoll is not passthrough|uring|uring-sqpoll; using passthrough\n"
            "DOORWAY_STATS=sometimes is not on|off|exit; using on\n"
            "DOORWAY_LOGG is not a doorway setting (see docs/configuration.md); ignored\n");
  Config d;
  EXPECT_EQ(c.disabled, d.disabled);
  EXPECT_EQ(c.accelerate, d.accelerate);
  EXPECT_EQ(c.log_level, d.log_level);
  EXPECT_EQ(c.door_dir, nullptr);
  EXPECT_EQ(c.allowed_uid_count, 0);
  EXPECT_EQ(c.fallback, d.fallback);
  EXPECT_EQ(c.stats, d.stats);
  // ...and each is taken out of the environment, so that the programs this
  // one starts do not report it again.
  ASSERT_EQ(c.reported_count, 8);
  std::string names;
  for (int i = 0; i < c.reported_count; ++i) {
    names += std::string(c.reported[i], c.reported_len[i]) + " ";
  }
  EXPECT_EQ(names,
            "DOORWAY_DISABLE DOORWAY_ACCELERATE DOORWAY_LOG DOORWAY_DIR DOORWAY_ALLOW_UIDS "
            "DOORWAY_FALLBACK DOORWAY_STATS DOORWAY_LOGG ");
  setenv("DOORWAY_LOGG", "debug", 1);
  setenv("DOORWAY_STATS", "sometimes", 1);
  setenv("DOORWAY_PRELOAD_SO", "/x.so", 1);
  ForgetReportedSettings(c);
  EXPECT_EQ(getenv("DOORWAY_LOGG"), nullptr);
  EXPECT_EQ(getenv("DOORWAY_STATS"), nullptr);
  EXPECT_STREQ(getenv("DOORWAY_PRELOAD_SO"), "/x.so");
  unsetenv("DOORWAY_PRELOAD_SO");
}

TEST(Config, EmptyMeansDefault) {
  const char* env[] = {"DOORWAY_DISABLE=",  "DOORWAY_ACCELERATE=",
                       "DOORWAY_LOG=",      "DOORWAY_LOG_FILE=",
                       "DOORWAY_DIR=",      "DOORWAY_ALLOW_UIDS=",
                       "DOORWAY_FALLBACK=", "DOORWAY_STATS=",
                       "DOORWAY_SPIN_NS=",  nullptr};
  Config c;
  EXPECT_EQ(CaptureLog([&] { c = ParseConfig(env); }), "");
  Config d;
  EXPECT_EQ(c.disabled, d.disabled);
  EXPECT_EQ(c.accelerate, d.accelerate);
  EXPECT_EQ(c.log_level, d.log_level);
  EXPECT_EQ(c.log_file, nullptr);
  EXPECT_EQ(c.door_dir, nullptr);
  EXPECT_EQ(c.allowed_uid_count, 0);
  EXPECT_EQ(c.fallback, d.fallback);
  EXPECT_EQ(c.stats, d.stats);
  EXPECT_EQ(c.spin_ns, d.spin_ns);
  EXPECT_EQ(c.reported_count, 0);
}

TEST(Config, GoodValuesAreQuiet) {
  const char* env[] = {"DOORWAY_DISABLE=0",      "DOORWAY_ACCELERATE=yes",
                       "DOORWAY_LOG=warn",       "DOORWAY_LOG_FILE=/tmp/l",
                       "DOORWAY_DIR=/tmp/d",     "DOORWAY_ALLOW_UIDS=1,2",
                       "DOORWAY_FALLBACK=uring", "DOORWAY_STATS=exit",
                       "DOORWAY_INHERIT=",       nullptr};
  Config c;
  EXPECT_EQ(CaptureLog([&] { c = ParseConfig(env); }), "");
  EXPECT_EQ(c.reported_count, 0);
}

// Every setting the runtime reads is in the table of docs/configuration.md,
// and the table names no setting the runtime does not read.
TEST(Config, DocumentedTableMatchesTheSettings) {
  std::ifstream f("docs/configuration.md");
  ASSERT_TRUE(f.good()) << "docs/configuration.md is not in the test's runfiles";
  std::stringstream ss;
  ss << f.rdbuf();
  std::string doc = ss.str();
  for (const char* const* n = kSettingNames; *n != nullptr; ++n) {
    EXPECT_NE(doc.find(std::string("| `") + *n + "` |"), std::string::npos)
        << *n << " has no row in docs/configuration.md";
  }
  std::istringstream in(doc);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("| `DOORWAY_", 0) != 0) continue;
    std::string name = line.substr(3, line.find('`', 3) - 3);
    bool known = false;
    for (const char* const* n = kSettingNames; *n != nullptr; ++n) known |= name == *n;
    // The launcher's own variable is documented with the settings.
    EXPECT_TRUE(known || name == "DOORWAY_PRELOAD_SO") << name << " is documented but not parsed";
  }
}

}  // namespace
}  // namespace doorway::runtime
