#include "runtime/signals.h"

#include <cerrno>

#include "runtime/real.h"

namespace doorway::runtime {

namespace {

__attribute__((tls_model("initial-exec"))) thread_local std::atomic<std::uint64_t> t_epoch{0};

// The program's handler for each signal, as it installed it.
struct Slot {
  std::atomic<void*> handler{nullptr};
  std::atomic<bool> siginfo{false};
};
Slot g_slots[NSIG];

void Trampoline(int sig, siginfo_t* info, void* context) {
  // relaxed: only this thread reads its own count (wait loops).
  t_epoch.fetch_add(1, std::memory_order_relaxed);
  if (sig <= 0 || sig >= NSIG) return;
  Slot& s = g_slots[sig];
  void* h = s.handler.load(std::memory_order_acquire);
  if (h == nullptr) return;
  if (s.siginfo.load(std::memory_order_relaxed)) {
    reinterpret_cast<void (*)(int, siginfo_t*, void*)>(h)(sig, info, context);
  } else {
    reinterpret_cast<void (*)(int)>(h)(sig);
  }
}

bool IsTrampoline(const struct sigaction& sa) {
  return (sa.sa_flags & SA_SIGINFO) != 0 && sa.sa_sigaction == &Trampoline;
}

// What the program should see for a disposition the kernel reports.
void Unwrap(int sig, struct sigaction* sa) {
  if (!IsTrampoline(*sa)) return;
  Slot& s = g_slots[sig];
  void* h = s.handler.load(std::memory_order_acquire);
  if (s.siginfo.load(std::memory_order_relaxed)) {
    sa->sa_sigaction = reinterpret_cast<void (*)(int, siginfo_t*, void*)>(h);
  } else {
    sa->sa_flags &= ~SA_SIGINFO;
    sa->sa_handler = reinterpret_cast<void (*)(int)>(h);
  }
}

}  // namespace

const std::atomic<std::uint64_t>* SignalEpochOfThisThread() { return &t_epoch; }

int Sigaction(int sig, const struct sigaction* act, struct sigaction* old) {
  if (sig <= 0 || sig >= NSIG || act == nullptr) {
    int rc = DOORWAY_REAL(sigaction)(sig, act, old);
    if (rc == 0 && old != nullptr && sig > 0 && sig < NSIG) Unwrap(sig, old);
    return rc;
  }
  bool info = (act->sa_flags & SA_SIGINFO) != 0;
  void* h =
      info ? reinterpret_cast<void*>(act->sa_sigaction) : reinterpret_cast<void*>(act->sa_handler);
  if (!info && (act->sa_handler == SIG_DFL || act->sa_handler == SIG_IGN)) {
    int rc = DOORWAY_REAL(sigaction)(sig, act, old);
    if (rc == 0 && old != nullptr) Unwrap(sig, old);
    return rc;
  }
  // The slot first (release: the trampoline's acquire load sees the handler
  // whole), then the kernel disposition. Between the two, a signal of this
  // number already runs the new handler, which the program asked for.
  Slot& s = g_slots[sig];
  void* prev_h = s.handler.exchange(h, std::memory_order_acq_rel);
  bool prev_info = s.siginfo.exchange(info, std::memory_order_relaxed);
  struct sigaction wrapped = *act;
  wrapped.sa_flags |= SA_SIGINFO;
  wrapped.sa_sigaction = &Trampoline;
  struct sigaction kernel_old;
  int rc = DOORWAY_REAL(sigaction)(sig, &wrapped, &kernel_old);
  if (rc != 0) {
    int e = errno;
    s.handler.store(prev_h, std::memory_order_release);
    s.siginfo.store(prev_info, std::memory_order_relaxed);
    errno = e;
    return rc;
  }
  if (old != nullptr) {
    *old = kernel_old;
    if (IsTrampoline(kernel_old)) {
      if (prev_info) {
        old->sa_sigaction = reinterpret_cast<void (*)(int, siginfo_t*, void*)>(prev_h);
      } else {
        old->sa_flags &= ~SA_SIGINFO;
        old->sa_handler = reinterpret_cast<void (*)(int)>(prev_h);
      }
    }
  }
  return 0;
}

namespace {

// The signals siginterrupt(sig, 1) asked signal() to install without
// SA_RESTART (glibc keeps the same set, _sigintr, for its signal()).
std::atomic<std::uint64_t> g_interrupting{0};

bool ValidHandlerCall(int sig, sighandler_t handler) {
  if (handler == SIG_ERR || sig < 1 || sig >= NSIG) {
    errno = EINVAL;
    return false;
  }
  return true;
}

std::uint64_t Bit(int sig) { return sig <= 64 ? std::uint64_t{1} << (sig - 1) : 0; }

}  // namespace

// glibc's signal() (also bsd_signal, ssignal): BSD semantics (SA_RESTART,
// the signal blocked in its handler). glibc implements these on its
// internal sigaction, which the interposed one never sees, hence these.
sighandler_t Signal(int sig, sighandler_t handler) {
  if (!ValidHandlerCall(sig, handler)) return SIG_ERR;
  struct sigaction act {};
  act.sa_handler = handler;
  sigemptyset(&act.sa_mask);
  sigaddset(&act.sa_mask, sig);
  bool interrupting = (g_interrupting.load(std::memory_order_relaxed) & Bit(sig)) != 0;
  act.sa_flags = interrupting ? 0 : SA_RESTART;
  struct sigaction old {};
  if (Sigaction(sig, &act, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

sighandler_t SysvSignal(int sig, sighandler_t handler) {
  if (!ValidHandlerCall(sig, handler)) return SIG_ERR;
  struct sigaction act {};
  act.sa_handler = handler;
  sigemptyset(&act.sa_mask);
  act.sa_flags = SA_RESETHAND | SA_NODEFER;
  struct sigaction old {};
  if (Sigaction(sig, &act, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

sighandler_t Sigset(int sig, sighandler_t disp) {
  if (!ValidHandlerCall(sig, disp)) return SIG_ERR;
  sigset_t set, oset;
  sigemptyset(&set);
  sigaddset(&set, sig);
  struct sigaction old {};
  if (disp == SIG_HOLD) {
    if (sigprocmask(SIG_BLOCK, &set, &oset) != 0) return SIG_ERR;
    if (sigismember(&oset, sig)) return SIG_HOLD;
    if (Sigaction(sig, nullptr, &old) != 0) return SIG_ERR;
    return old.sa_handler;
  }
  struct sigaction act {};
  act.sa_handler = disp;
  sigemptyset(&act.sa_mask);
  act.sa_flags = 0;
  if (Sigaction(sig, &act, &old) != 0) return SIG_ERR;
  if (sigprocmask(SIG_UNBLOCK, &set, &oset) != 0) return SIG_ERR;
  return sigismember(&oset, sig) ? SIG_HOLD : old.sa_handler;
}

int Siginterrupt(int sig, int flag) {
  if (sig < 1 || sig >= NSIG) {
    errno = EINVAL;
    return -1;
  }
  struct sigaction act {};
  if (Sigaction(sig, nullptr, &act) != 0) return -1;
  if (flag != 0) {
    g_interrupting.fetch_or(Bit(sig), std::memory_order_relaxed);
    act.sa_flags &= ~SA_RESTART;
  } else {
    g_interrupting.fetch_and(~Bit(sig), std::memory_order_relaxed);
    act.sa_flags |= SA_RESTART;
  }
  return Sigaction(sig, &act, nullptr);
}

}  // namespace doorway::runtime
