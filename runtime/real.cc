#include "runtime/real.h"

#include <dlfcn.h>
#include <link.h>

#include <cerrno>
#include <cstdint>
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

// Our module's loaded address range [lo, hi), found once with
// dl_iterate_phdr. dladdr() would tell the module of each resolved symbol,
// but it also looks for the nearest symbol, a scan of the module's symbol
// table: two calls per resolved function were ~20% of the start-up of a
// program under the preload (perf of /bin/true). Relaxed atomics: threads
// that race compute the same values.
constinit std::atomic<std::uintptr_t> g_own_lo{0};
constinit std::atomic<std::uintptr_t> g_own_hi{0};

int FindOwnRange(dl_phdr_info* info, size_t, void*) {
  const auto anchor = reinterpret_cast<std::uintptr_t>(&Anchor);
  std::uintptr_t lo = UINTPTR_MAX, hi = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    const std::uintptr_t start = info->dlpi_addr + ph.p_vaddr;
    if (start < lo) lo = start;
    if (start + ph.p_memsz > hi) hi = start + ph.p_memsz;
  }
  if (anchor < lo || anchor >= hi) return 0;
  g_own_lo.store(lo, std::memory_order_relaxed);
  g_own_hi.store(hi, std::memory_order_relaxed);
  return 1;
}

bool IsOurs(const void* f) {
  if (g_own_hi.load(std::memory_order_relaxed) == 0) dl_iterate_phdr(&FindOwnRange, nullptr);
  const auto a = reinterpret_cast<std::uintptr_t>(f);
  return a >= g_own_lo.load(std::memory_order_relaxed) &&
         a < g_own_hi.load(std::memory_order_relaxed);
}

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
  } else if (IsOurs(f)) {
    Die("dlsym(RTLD_NEXT) returned doorway's own symbol (is doorway loaded twice?)", e.name);
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
