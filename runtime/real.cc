#include "runtime/real.h"

#include <dlfcn.h>

#include <cerrno>
#include <cstdlib>

#include "runtime/log.h"

namespace doorway::runtime::real {

constinit std::atomic<void*> g_table[static_cast<int>(Id::kCount)] = {};

namespace {

struct Entry {
  const char* name;
  long syscall_nr;
};

constexpr Entry kEntries[] = {
#define DOORWAY_REAL_ENTRY(name, nr) {#name, nr},
    DOORWAY_REAL_SYMBOLS(DOORWAY_REAL_ENTRY)
#undef DOORWAY_REAL_ENTRY
};
static_assert(sizeof(kEntries) / sizeof(kEntries[0]) == static_cast<int>(Id::kCount));

// Set while this thread is inside dlsym. noinline and accessed only through
// these functions so that the compiler cannot cache the TLS address across
// the dlsym call (mimalloc's src/init.c explains the same hazard), and
// initial-exec TLS so that touching it never allocates. Not file-local
// (gold bug, runtime/signals.cc "TLS and gold").
}  // namespace
__attribute__((tls_model("initial-exec"),
               visibility("hidden"))) constinit thread_local bool t_real_resolving = false;
namespace {

__attribute__((noinline)) bool EnterResolving() {
  if (t_real_resolving) return false;
  t_real_resolving = true;
  return true;
}
__attribute__((noinline)) void LeaveResolving() { t_real_resolving = false; }

// A same-signature syscall used in place of libc while we are inside dlsym.
// Up to six integer-class arguments, as the x86-64 syscall ABI allows.
#define DOORWAY_FALLBACK(nr)                                    \
  +[](long a, long b, long c, long d, long e, long f) -> long { \
    return ::syscall(nr, a, b, c, d, e, f);                     \
  }

void* Fallback(Id id) {
  switch (id) {
#define DOORWAY_REAL_FALLBACK(name, nr)                                            \
  case Id::k_##name:                                                               \
    if constexpr ((nr) != 0) return reinterpret_cast<void*>(DOORWAY_FALLBACK(nr)); \
    break;
    DOORWAY_REAL_SYMBOLS(DOORWAY_REAL_FALLBACK)
#undef DOORWAY_REAL_FALLBACK
    default:
      break;
  }
  return nullptr;
}

// Stands in for a function this libc lacks: fails like an unknown syscall.
long Missing(long, long, long, long, long, long) {
  errno = ENOSYS;
  return -1;
}

void Die(const char* what, const char* name) {
  RawLog(LogLevel::kError, "doorway: fatal: %s: %s\n", what, name);
  abort();
}

// Any function of ours, to tell our own module from the next one.
void Anchor() {}

}  // namespace

void* Resolve(Id id) {
  const Entry& e = kEntries[static_cast<int>(id)];
  if (!EnterResolving()) {
    void* f = Fallback(id);
    if (f == nullptr) Die("called during symbol resolution with no syscall fallback", e.name);
    return f;
  }
  void* f = dlsym(RTLD_NEXT, e.name);
  LeaveResolving();
  if (f == nullptr) {
    // Older glibc without this function (epoll_pwait2, close_range, closefrom,
    // execveat): use the system call if there is one, else fail with ENOSYS.
    f = Fallback(id);
    if (f == nullptr) f = reinterpret_cast<void*>(&Missing);
  } else {
    Dl_info mine{}, theirs{};
    if (dladdr(reinterpret_cast<void*>(&Anchor), &mine) != 0 && dladdr(f, &theirs) != 0 &&
        mine.dli_fbase == theirs.dli_fbase) {
      Die("dlsym(RTLD_NEXT) returned doorway's own symbol (is doorway loaded twice?)", e.name);
    }
  }
  g_table[static_cast<int>(id)].store(f, std::memory_order_relaxed);
  return f;
}

void ResolveAll() {
  for (int i = 0; i < static_cast<int>(Id::kCount); ++i) {
    if (g_table[i].load(std::memory_order_relaxed) == nullptr) Resolve(static_cast<Id>(i));
  }
}

}  // namespace doorway::runtime::real
