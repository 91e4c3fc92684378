#include "runtime/stats.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "runtime/accel.h"
#include "runtime/config.h"
#include "runtime/stats_format.h"

namespace doorway::runtime {
namespace {

// The process's stats file, mapped read-only as //tools:stat maps it.
class StatsFile {
 public:
  explicit StatsFile(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return;
    struct stat st;
    if (fstat(fd, &st) == 0) mode_ = st.st_mode & 07777;
    void* p = mmap(nullptr, stats::kFileSize, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p != MAP_FAILED) h_ = static_cast<const stats::ProcessHeader*>(p);
  }
  ~StatsFile() {
    if (h_ != nullptr) munmap(const_cast<stats::ProcessHeader*>(h_), stats::kFileSize);
  }
  const stats::ProcessHeader* header() const { return h_; }
  const stats::Slot& slot(int i) const { return stats::Slots(h_)[i]; }
  unsigned mode() const { return mode_; }

 private:
  const stats::ProcessHeader* h_ = nullptr;
  unsigned mode_ = 0;
};

class StatsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/doorway-statstest.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = new std::string(tmpl);
    Config c = GetConfig();
    c.door_dir = dir_->c_str();
    c.stats = StatsMode::kOn;
    SetConfig(c);
    StatsConfigure(c);
  }
  static void TearDownTestSuite() {
    std::string cmd = "rm -rf " + *dir_;
    (void)system(cmd.c_str());
  }
  std::string Path() const { return *dir_ + "/stats." + std::to_string(getpid()); }

  // A connection as accel.cc builds one: a segment, a role, a slot.
  void Open(Connection& c, int fd) {
    transport::SegmentOptions so;
    so.ring_capacity[0] = 1 << 16;
    so.ring_capacity[1] = 1 << 17;
    ASSERT_EQ(transport::Segment::Create(so, &c.seg), 0);
    c.role = transport::Role::kClient;
    StatsOpen(c);
    c.local.family = c.peer.family = AF_INET;
    c.local.port = 1111;
    c.peer.port = 2222;
    StatsPublish(c, fd);
  }

  static std::string* dir_;
};
std::string* StatsTest::dir_ = nullptr;

TEST_F(StatsTest, ConnectionsArePublishedCountedAndFreed) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Connection a;
  Open(a, sv[0]);
  ASSERT_NE(a.stats, nullptr);
  StatsFile f(Path());
  ASSERT_NE(f.header(), nullptr) << Path();
  EXPECT_EQ(f.mode(), 0600u);
  const stats::ProcessHeader* h = f.header();
  EXPECT_EQ(h->magic, stats::kMagic);
  EXPECT_EQ(h->pid, getpid());
  EXPECT_NE(h->start_ticks, 0u);
  // Find the connection's slot through the reader's mapping, by its socket.
  struct stat st;
  ASSERT_EQ(fstat(sv[0], &st), 0);
  std::uint32_t hw = h->high_water.load();
  int idx = -1;
  for (std::uint32_t i = 0; i < hw; ++i) {
    if (f.slot(static_cast<int>(i)).socket_ino == st.st_ino) idx = static_cast<int>(i);
  }
  ASSERT_GE(idx, 0);
  const stats::Slot& s = f.slot(idx);
  EXPECT_EQ(s.state.load(), stats::kLive);
  EXPECT_EQ(s.capacity[0], 1u << 16);
  EXPECT_EQ(s.capacity[1], 1u << 17);
  EXPECT_EQ(s.local.port, 1111);
  EXPECT_EQ(s.peer.port, 2222);
  EXPECT_EQ(s.fd, sv[0]);
  ASSERT_EQ(fstat(a.seg.fd(), &st), 0);
  EXPECT_EQ(s.segment_ino, st.st_ino);
  // The rings count into the slot: what the data path bumps is what the
  // reader sees.
  EXPECT_EQ(StatsTx(a), &a.stats->tx);
  a.tx = a.seg.MakeTxRing(a.role, StatsTx(a));
  ASSERT_EQ(a.tx.Write("hello", 5), 5);
  EXPECT_EQ(s.tx.bytes.load(), 5u);
  EXPECT_EQ(s.tx.ops.load(), 1u);
  std::uint64_t closed_before = h->closed_tx_bytes.load();
  // Closing frees the slot and moves its counters to the process totals;
  // the next connection reuses the slot.
  StatsClose(a);
  EXPECT_EQ(a.stats, nullptr);
  EXPECT_EQ(s.state.load(), stats::kFree);
  EXPECT_EQ(h->closed_tx_bytes.load(), closed_before + 5);
  Connection b;
  Open(b, sv[1]);
  ASSERT_NE(b.stats, nullptr);
  EXPECT_EQ(h->high_water.load(), hw);  // no new slot used
  EXPECT_EQ(s.tx.bytes.load(), 0u);     // counters start at zero
  StatsClose(b);
  close(sv[0]);
  close(sv[1]);
}

TEST_F(StatsTest, UnpublishedConnectionsCountLocally) {
  Connection c;
  EXPECT_EQ(StatsTx(c), &c.tx_stats);
  EXPECT_EQ(StatsRx(c), &c.rx_stats);
  StatsClose(c);  // no slot: nothing happens
}

// Runs fn in a fork child (as the runtime's fork wrapper does, with
// StatsAfterFork on both sides) and returns its exit status.
template <typename Fn>
int InForkChild(Fn fn) {
  pid_t pid = fork();
  if (pid == 0) {
    StatsAfterFork(0);
    _exit(fn());
  }
  StatsAfterFork(pid);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST_F(StatsTest, ForkChildGetsItsOwnFile) {
  StatsNoteSocket();  // the parent has a file
  ASSERT_EQ(access(Path().c_str(), F_OK), 0);
  auto own_file = [this] {
    return access((*dir_ + "/stats." + std::to_string(getpid())).c_str(), F_OK) == 0;
  };
  // Nothing to show: no file until the child uses a socket (fork+exec
  // makes none).
  EXPECT_EQ(InForkChild([&] {
              if (own_file()) return 1;
              StatsNoteSocket();
              return own_file() ? 0 : 2;
            }),
            0);
  // With a live connection: a file at once, and the child's counters are
  // its own (the parent's do not move).
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Connection c;
  Open(c, sv[0]);
  ASSERT_NE(c.stats, nullptr);
  transport::StatAdd(c.stats->tx.bytes, 3);
  EXPECT_EQ(InForkChild([&] {
              if (!own_file()) return 1;
              if (c.stats->tx.bytes.load() != 0 || c.stats->shared == 0) return 2;
              transport::StatAdd(c.stats->tx.bytes, 1000);
              return 0;
            }),
            0);
  EXPECT_EQ(c.stats->tx.bytes.load(), 3u);
  EXPECT_EQ(c.stats->shared, 1);
  StatsClose(c);
  close(sv[0]);
  close(sv[1]);
}

}  // namespace
}  // namespace doorway::runtime
