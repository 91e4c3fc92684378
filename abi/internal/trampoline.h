// Shared pieces of the interposed symbols. Each exported function is a
// trampoline: (control calls only) make sure the runtime is initialised,
// dispatch to the runtime when the fd is one doorway manages, otherwise call
// libc's function. The runtime returns -errno; Ret() turns that into the
// libc convention at the single exit point.
#ifndef DOORWAY_ABI_INTERNAL_TRAMPOLINE_H_
#define DOORWAY_ABI_INTERNAL_TRAMPOLINE_H_

#include <cerrno>

#include "fdtable/fdtable.h"
#include "runtime/accel.h"
#include "runtime/real.h"
#include "runtime/runtime.h"
#include "runtime/sockets.h"

#define DOORWAY_EXPORT extern "C" __attribute__((visibility("default")))

namespace doorway::abi {

template <class T>
inline T Ret(T r) {
  if (r < 0) {
    errno = static_cast<int>(-r);
    return -1;
  }
  return r;
}

// Whether fd is one the runtime manages (accelerated connection or
// listener): one load from the fd table, no reference taken.
inline bool Managed(int fd) { return fdtable::GlobalTable().Tag(fd) != runtime::kTagPlain; }

inline void EnsureInitialised() {
  if (__builtin_expect(!runtime::Initialised(), 0)) runtime::Initialise();
}

}  // namespace doorway::abi

#endif  // DOORWAY_ABI_INTERNAL_TRAMPOLINE_H_
