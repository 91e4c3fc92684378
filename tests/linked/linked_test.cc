// Linked-in mode: this binary links //abi:doorway instead of using
// LD_PRELOAD. Its own socket calls, and those of a shared library it loads,
// must go through doorway.
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "abi/doorway.h"
#include "gtest/gtest.h"

namespace {

TEST(Linked, NoPreloadInvolved) {
  const char* p = getenv("LD_PRELOAD");
  EXPECT_TRUE(p == nullptr || std::string(p).find("libdoorway") == std::string::npos);
  EXPECT_NE(dlsym(RTLD_DEFAULT, "doorway_fd_info"), nullptr);
  EXPECT_STREQ(doorway_version(), "0.1.0");
}

TEST(Linked, OwnCallsAreTracked) {
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  doorway_socket_info info{};
  ASSERT_EQ(doorway_fd_info(fd, &info), 0);
  EXPECT_EQ(info.domain, AF_INET6);
  EXPECT_EQ(info.origin, DOORWAY_ORIGIN_SOCKET);
  close(fd);
  EXPECT_EQ(doorway_fd_info(fd, &info), -1);
}

TEST(Linked, SharedLibraryCallsAreTracked) {
  const char* path = getenv("MAKE_SOCKET_SO");
  ASSERT_NE(path, nullptr);
  void* lib = dlopen(path, RTLD_NOW);
  ASSERT_NE(lib, nullptr) << dlerror();
  auto make = reinterpret_cast<int (*)()>(dlsym(lib, "linked_test_make_socket"));
  ASSERT_NE(make, nullptr);
  int fd = make();
  ASSERT_GE(fd, 0);
  doorway_socket_info info{};
  ASSERT_EQ(doorway_fd_info(fd, &info), 0) << "the library's socket() bypassed doorway";
  EXPECT_EQ(info.origin, DOORWAY_ORIGIN_SOCKET);
  close(fd);
  EXPECT_EQ(doorway_fd_info(fd, &info), -1) << "the library's close() bypassed doorway";
}

}  // namespace
