#include "runtime/signals.h"

#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "runtime/real.h"

namespace doorway::runtime {

namespace internal {
__attribute__((
    tls_model("initial-exec"))) constinit thread_local SignalDeferral t_signal_deferral{};
}  // namespace internal

using internal::t_signal_deferral;

// TLS and gold: Bazel's toolchain links with gold, which gets initial-exec
// TLS of file-local variables (anonymous namespace, static) wrong in a
// shared object: each R_X86_64_TPOFF64 relocation names the next local
// .dynsym entry, so every such variable lived in its neighbour's place
// (harmless by luck while they were all small and distinct; t_signal_deferred,
// 4.5 KB, ran into the thread control block). Variables of external
// linkage (hidden) are resolved correctly, so every initial-exec
// thread-local of libdoorway.so is one (//abi:tls_relocations_test).
__attribute__((tls_model("initial-exec"),
               visibility("hidden"))) constinit thread_local std::atomic<std::uint64_t>
    t_signal_epoch{0};

namespace {

// The program's handler for each signal, as it installed it. The fields are
// separate atomics: a signal that races the program's own sigaction() may
// see a mix of the old and new settings (the kernel would give it one or
// the other); the handler itself is always one the program installed.
struct Slot {
  std::atomic<void*> handler{nullptr};
  std::atomic<bool> siginfo{false};
  std::atomic<int> flags{0};
  std::atomic<std::uint64_t> mask{0};  // sa_mask, signals 1..64
};
Slot g_slots[NSIG];

}  // namespace

namespace internal {

// A signal saved inside a section (signals.h "Critical sections").
struct Deferred {
  // Set while its handler runs (the slot is not reused meanwhile: the
  // handler holds pointers to info and uc).
  std::atomic<bool> running;
  int sig;
  void* handler;
  bool siginfo;
  int flags;
  std::uint64_t mask;
  siginfo_t info;
  ucontext_t uc;
};

}  // namespace internal

// Not file-local, nor of a file-local type: "TLS and gold" above.
__attribute__((tls_model("initial-exec"),
               visibility("hidden"))) constinit thread_local internal::Deferred
    t_signal_deferred[kMaxDeferredSignals]{};

namespace {

using internal::Deferred;

std::uint64_t Bit(int sig) { return sig <= 64 ? std::uint64_t{1} << (sig - 1) : 0; }

std::uint64_t FirstWord(const sigset_t& set) {
  std::uint64_t w;
  static_assert(sizeof(sigset_t) >= sizeof(w));
  __builtin_memcpy(&w, &set, sizeof(w));
  return w;
}

// The kernel's 64-bit signal mask (rt_sigprocmask without libc, which may
// be instrumented or filter its own signals out).
std::uint64_t ChangeMask(int how, const std::uint64_t* set) {
  std::uint64_t old = 0;
  syscall(SYS_rt_sigprocmask, how, set, &old, sizeof(old));
  return old;
}

// A signal raised by a fault: the faulting instruction runs again when the
// handler returns, so its handler can never wait.
bool Synchronous(int sig, const siginfo_t* info) {
  if (sig == SIGABRT) return true;  // abort(): this thread does not return to the section
  bool fault_signal = sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL ||
                      sig == SIGTRAP || sig == SIGSYS;
  return fault_signal && (info == nullptr || info->si_code > 0);
}

void Run(void* h, bool siginfo, int sig, siginfo_t* info, void* context) {
  if (siginfo) {
    reinterpret_cast<void (*)(int, siginfo_t*, void*)>(h)(sig, info, context);
  } else {
    reinterpret_cast<void (*)(int)>(h)(sig);
  }
}

// Saves the signal for delivery when the section ends; false if there is
// no room (it then runs now).
bool Defer(int sig, siginfo_t* info, void* context, Slot& s, void* h) {
  internal::SignalDeferral& d = t_signal_deferral;
  // Reserve a place with a CAS: another signal may interrupt us here and
  // take the same place first (with SA_NODEFER, even this signal). The
  // head does not move meanwhile: delivery runs only outside sections.
  std::uint32_t t;
  for (;;) {
    t = d.tail.load(std::memory_order_relaxed);
    if (t - d.head.load(std::memory_order_relaxed) >= kMaxDeferredSignals) return false;
    if (t_signal_deferred[t % kMaxDeferredSignals].running.load(std::memory_order_relaxed))
      return false;
    if (d.tail.compare_exchange_weak(t, t + 1, std::memory_order_relaxed)) break;
  }
  Deferred& e = t_signal_deferred[t % kMaxDeferredSignals];
  e.sig = sig;
  e.handler = h;
  e.siginfo = s.siginfo.load(std::memory_order_relaxed);
  e.flags = s.flags.load(std::memory_order_relaxed);
  e.mask = s.mask.load(std::memory_order_relaxed);
  if (info != nullptr) {
    __builtin_memcpy(&e.info, info, sizeof(e.info));
  } else {
    __builtin_memset(&e.info, 0, sizeof(e.info));
    e.info.si_signo = sig;
  }
  if (context != nullptr) {
    auto* uc = static_cast<ucontext_t*>(context);
    // The kernel's frame holds a shorter ucontext than glibc's ucontext_t
    // (an 8-byte mask, the FP state elsewhere in the frame), so copy the
    // fields, not the struct.
    __builtin_memset(&e.uc, 0, sizeof(e.uc));
    e.uc.uc_flags = uc->uc_flags;
    e.uc.uc_link = uc->uc_link;
    e.uc.uc_stack = uc->uc_stack;
    e.uc.uc_mcontext = uc->uc_mcontext;
    __builtin_memcpy(&e.uc.uc_sigmask, &uc->uc_sigmask, sizeof(std::uint64_t));
#if defined(__x86_64__)
    if (uc->uc_mcontext.fpregs != nullptr) {
      e.uc.__fpregs_mem = *uc->uc_mcontext.fpregs;
      e.uc.uc_mcontext.fpregs = &e.uc.__fpregs_mem;
    }
#endif
    // Blocked when the interrupted code resumes (sigreturn restores this
    // mask): more of this signal waits in the kernel until delivery.
    std::uint64_t m = FirstWord(uc->uc_sigmask) | Bit(sig);
    __builtin_memcpy(&uc->uc_sigmask, &m, sizeof(m));
  } else {
    __builtin_memset(&e.uc, 0, sizeof(e.uc));
  }
  return true;
}

void Trampoline(int sig, siginfo_t* info, void* context) {
  if (sig <= 0 || sig >= NSIG) return;
  Slot& s = g_slots[sig];
  void* h = s.handler.load(std::memory_order_acquire);
  if (h != nullptr && t_signal_deferral.depth.load(std::memory_order_relaxed) != 0 &&
      !Synchronous(sig, info) && Defer(sig, info, context, s, h)) {
    return;
  }
  // relaxed: only this thread reads its own count (wait loops).
  t_signal_epoch.fetch_add(1, std::memory_order_relaxed);
  if (h == nullptr) return;
  Run(h, s.siginfo.load(std::memory_order_relaxed), sig, info, context);
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

namespace internal {

void DeliverDeferredSignals() {
  SignalDeferral& d = t_signal_deferral;
  for (;;) {
    std::uint32_t h = d.head.load(std::memory_order_relaxed);
    if (h == d.tail.load(std::memory_order_relaxed)) return;
    Deferred& e = t_signal_deferred[h % kMaxDeferredSignals];
    // Claim it: a handler that runs between our load and the CAS (we are
    // outside sections) may deliver it first. `running` before the CAS:
    // from the CAS on, a new deferral could otherwise reuse the place.
    e.running.store(true, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (!d.head.compare_exchange_strong(h, h + 1, std::memory_order_relaxed)) {
      e.running.store(false, std::memory_order_relaxed);
      continue;
    }
    // The mask the kernel sets for a handler: sa_mask, and the signal
    // itself unless SA_NODEFER. The signal is blocked now (Defer); the
    // mask after the handler is the current one without it, as sigreturn
    // would restore.
    std::uint64_t bit = Bit(e.sig);
    std::uint64_t cur;
    if ((e.flags & SA_NODEFER) == 0) {
      cur = ChangeMask(SIG_BLOCK, &e.mask);
    } else {
      cur = ChangeMask(SIG_BLOCK, nullptr);
      std::uint64_t during = (cur & ~bit) | e.mask;
      ChangeMask(SIG_SETMASK, &during);
    }
    t_signal_epoch.fetch_add(1, std::memory_order_relaxed);
    Run(e.handler, e.siginfo, e.sig, &e.info, &e.uc);
    std::uint64_t after = cur & ~bit;
    ChangeMask(SIG_SETMASK, &after);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    e.running.store(false, std::memory_order_relaxed);
  }
}

}  // namespace internal

const std::atomic<std::uint64_t>* SignalEpochOfThisThread() { return &t_signal_epoch; }

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
  s.flags.store(act->sa_flags, std::memory_order_relaxed);
  s.mask.store(FirstWord(act->sa_mask), std::memory_order_relaxed);
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
