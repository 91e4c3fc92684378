#include "runtime/config.h"

#include "gtest/gtest.h"

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

}  // namespace
}  // namespace doorway::runtime
