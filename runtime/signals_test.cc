// The counting trampoline's deferral of signals inside critical sections
// (signals.h "Critical sections"), driven directly: handlers installed with
// runtime::Sigaction, signals sent to this thread with tgkill or
// rt_tgsigqueueinfo.
#include "runtime/signals.h"

#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "gtest/gtest.h"

namespace doorway::runtime {
namespace {

std::atomic<int> g_runs{0};
std::atomic<int> g_code{0};
std::atomic<int> g_value{0};
std::atomic<int> g_self_blocked{-1};
std::atomic<int> g_usr2_blocked{-1};
std::atomic<std::uint32_t> g_depth{99};
std::atomic<bool> g_context_ok{false};

bool Blocked(int sig) {
  sigset_t cur;
  pthread_sigmask(SIG_BLOCK, nullptr, &cur);
  return sigismember(&cur, sig) == 1;
}

void Handler(int sig, siginfo_t* info, void* context) {
  g_code = info->si_code;
  g_value = info->si_value.sival_int;
  g_self_blocked = Blocked(sig);
  g_usr2_blocked = Blocked(SIGUSR2);
  g_depth = internal::t_signal_deferral.depth.load();
  auto* uc = static_cast<ucontext_t*>(context);
  bool ok = uc != nullptr;
#if defined(__x86_64__)
  ok = ok && uc->uc_mcontext.gregs[REG_RIP] != 0 && uc->uc_mcontext.gregs[REG_RSP] != 0;
#endif
  g_context_ok = ok;
  g_runs.fetch_add(1);
}

void Raise(int sig) { syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), sig); }

void Queue(int sig, int code, int value) {
  siginfo_t si;
  memset(&si, 0, sizeof(si));
  si.si_signo = sig;
  si.si_code = code;
  si.si_pid = getpid();
  si.si_uid = getuid();
  si.si_value.sival_int = value;
  syscall(SYS_rt_tgsigqueueinfo, getpid(), syscall(SYS_gettid), sig, &si);
}

class Deferral : public testing::Test {
 protected:
  void SetUp() override {
#if defined(__SANITIZE_THREAD__)
    // tsan queues signals itself and runs them from its interceptors,
    // whatever the mask: not what this tests.
    GTEST_SKIP() << "tsan delivers signals itself";
#endif
    g_runs = 0;
    g_code = 0;
    g_value = 0;
    g_self_blocked = -1;
    g_usr2_blocked = -1;
    g_depth = 99;
    g_context_ok = false;
    Install(SIGUSR1, SA_SIGINFO);
  }
  void TearDown() override {
    for (int i = 0; i < n_; ++i) Sigaction(sigs_[i], &old_[i], nullptr);
  }
  // Handler for sig with flags; SIGUSR2 in its sa_mask.
  void Install(int sig, int flags) {
    struct sigaction sa {};
    sa.sa_sigaction = Handler;
    sa.sa_flags = flags | SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR2);
    ASSERT_LT(n_, 8);
    sigs_[n_] = sig;
    ASSERT_EQ(Sigaction(sig, &sa, &old_[n_]), 0);
    ++n_;
  }

  int sigs_[8] = {};
  struct sigaction old_[8]{};
  int n_ = 0;
};

TEST_F(Deferral, OutsideASectionTheHandlerRunsAtOnce) {
  Raise(SIGUSR1);
  EXPECT_EQ(g_runs.load(), 1);
  EXPECT_EQ(g_depth.load(), 0u);
}

TEST_F(Deferral, InsideASectionTheHandlerRunsWhenItEnds) {
  EnterSignalSection();
  Raise(SIGUSR1);
  EXPECT_EQ(g_runs.load(), 0);
  // Blocked until its handler has run: another one waits in the kernel.
  EXPECT_TRUE(Blocked(SIGUSR1));
  Raise(SIGUSR1);
  EXPECT_EQ(g_runs.load(), 0);
  LeaveSignalSection();
  // The saved one, then the pending one once unblocked.
  EXPECT_EQ(g_runs.load(), 2);
  EXPECT_EQ(g_code.load(), SI_TKILL);
  EXPECT_EQ(g_depth.load(), 0u);
  EXPECT_FALSE(Blocked(SIGUSR1));
}

TEST_F(Deferral, TheHandlerGetsTheKernelsMaskAndTheSavedSiginfo) {
  EnterSignalSection();
  Queue(SIGUSR1, SI_QUEUE, 4242);
  EXPECT_EQ(g_runs.load(), 0);
  LeaveSignalSection();
  EXPECT_EQ(g_runs.load(), 1);
  EXPECT_EQ(g_code.load(), SI_QUEUE);
  EXPECT_EQ(g_value.load(), 4242);
  EXPECT_EQ(g_self_blocked.load(), 1);  // no SA_NODEFER
  EXPECT_EQ(g_usr2_blocked.load(), 1);  // sa_mask
  EXPECT_TRUE(g_context_ok.load());
  EXPECT_FALSE(Blocked(SIGUSR1));
  EXPECT_FALSE(Blocked(SIGUSR2));
}

TEST_F(Deferral, NodeferLeavesTheSignalUnblockedInItsHandler) {
  Install(SIGUSR1, SA_NODEFER);
  EnterSignalSection();
  Raise(SIGUSR1);
  LeaveSignalSection();
  EXPECT_EQ(g_runs.load(), 1);
  EXPECT_EQ(g_self_blocked.load(), 0);
  EXPECT_EQ(g_usr2_blocked.load(), 1);
}

TEST_F(Deferral, ResethandRunsTheHandlerOnce) {
  Install(SIGUSR1, SA_RESETHAND);
  EnterSignalSection();
  Raise(SIGUSR1);
  struct sigaction now {};
  ASSERT_EQ(Sigaction(SIGUSR1, nullptr, &now), 0);
  EXPECT_EQ(now.sa_handler, SIG_DFL);  // reset by the kernel at delivery
  LeaveSignalSection();
  EXPECT_EQ(g_runs.load(), 1);
}

TEST_F(Deferral, NestedSectionsDeliverAtTheOutermostEnd) {
  EnterSignalSection();
  EnterSignalSection();
  Raise(SIGUSR1);
  LeaveSignalSection();
  EXPECT_EQ(g_runs.load(), 0);
  LeaveSignalSection();
  EXPECT_EQ(g_runs.load(), 1);
}

TEST_F(Deferral, AWindowRunsTheSavedHandlersAndSignalsRunInside) {
  EnterSignalSection();
  Raise(SIGUSR1);
  SignalWindow w;
  w.Open();
  EXPECT_EQ(g_runs.load(), 1);
  Raise(SIGUSR1);  // a wait: at once
  EXPECT_EQ(g_runs.load(), 2);
  EXPECT_EQ(g_depth.load(), 0u);
  w.Close();
  Raise(SIGUSR1);  // the section again
  EXPECT_EQ(g_runs.load(), 2);
  LeaveSignalSection();
  EXPECT_EQ(g_runs.load(), 3);
}

TEST_F(Deferral, FaultSignalsAndAbortAreNeverDeferred) {
  Install(SIGSEGV, 0);
  Install(SIGABRT, 0);
  EnterSignalSection();
  Queue(SIGSEGV, SEGV_MAPERR, 1);  // looks like a fault: runs now
  EXPECT_EQ(g_runs.load(), 1);
  Queue(SIGSEGV, SI_QUEUE, 2);  // sent by a process: deferred
  EXPECT_EQ(g_runs.load(), 1);
  Raise(SIGABRT);
  EXPECT_EQ(g_runs.load(), 2);
  LeaveSignalSection();
  EXPECT_EQ(g_runs.load(), 3);
  EXPECT_EQ(g_value.load(), 2);
}

TEST_F(Deferral, MoreSignalsThanTheQueueHoldsRunAtOnce) {
  const int extra[] = {SIGUSR2, SIGRTMIN + 1, SIGRTMIN + 2, SIGRTMIN + 3};
  for (int sig : extra) Install(sig, 0);
  EnterSignalSection();
  Raise(SIGUSR1);
  for (int sig : extra) Raise(sig);
  EXPECT_EQ(g_runs.load(),
            static_cast<int>(std::size(extra)) + 1 - static_cast<int>(kMaxDeferredSignals));
  LeaveSignalSection();
  EXPECT_EQ(g_runs.load(), static_cast<int>(std::size(extra)) + 1);
}

}  // namespace
}  // namespace doorway::runtime
