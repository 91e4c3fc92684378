#include <liburing.h>
#include <numa.h>

#include "absl/status/status.h"
#include "gtest/gtest.h"

TEST(Toolchain, Links) {
  io_uring ring;
  int r = io_uring_queue_init(4, &ring, 0);
  if (r == 0) io_uring_queue_exit(&ring);
  EXPECT_TRUE(absl::OkStatus().ok());
  (void)numa_available();
}
