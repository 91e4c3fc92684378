// Process-wide state of the doorway runtime.
//
// How the pieces fit (runtime/): real.h resolves the libc functions doorway
// shadows; config.h reads DOORWAY_* settings; log.h writes diagnostics with
// raw system calls; sockets.h keeps the shadow fd table (//fdtable) in step
// with the kernel's. Initialise() runs from a constructor (before main in
// both the preload and the linked-in mode) and may be called again safely;
// until it has run, interposed calls still work: they pass straight to libc.
#ifndef DOORWAY_RUNTIME_RUNTIME_H_
#define DOORWAY_RUNTIME_RUNTIME_H_

extern "C" char** environ;

namespace doorway::runtime {

// Idempotent; thread-safe (the first caller does the work, the others wait
// for nothing: they may proceed in pass-through until it is done).
void Initialise();

bool Initialised();

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_RUNTIME_H_
