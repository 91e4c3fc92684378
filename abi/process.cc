// fork, exec and spawn. The shadow table is ordinary memory, so a fork child
// inherits it exactly as it inherits the kernel's fd table; after exec the
// new program's runtime rebuilds it by scanning its inherited fds.
// Fortified glibc headers (Bazel's opt mode sets _FORTIFY_SOURCE) declare
// read/recv/poll as inline wrappers that would clash with our definitions.
#undef _FORTIFY_SOURCE

#include <signal.h>
#include <spawn.h>
#include <unistd.h>

#include <cstdarg>

#include "abi/internal/trampoline.h"
#include "runtime/accel.h"
#include "runtime/inherit.h"
#include "runtime/relay.h"
#include "runtime/signals.h"
#include "runtime/stats.h"

using doorway::abi::Ret;
namespace rt = doorway::runtime;

extern "C" char** environ;

DOORWAY_EXPORT pid_t fork(void) { return Ret(rt::Fork()); }

// Handlers run through a counting trampoline (runtime/signals.h), so that
// waits on accelerated sockets return EINTR like the kernel's.
DOORWAY_EXPORT int sigaction(int sig, const struct sigaction* act, struct sigaction* old) {
  return rt::Sigaction(sig, act, old);
}

DOORWAY_EXPORT int __sigaction(int sig, const struct sigaction* act, struct sigaction* old) {
  return rt::Sigaction(sig, act, old);
}

// glibc builds these on its internal sigaction, so without their own
// trampolines their handlers would bypass the counting one.
DOORWAY_EXPORT sighandler_t signal(int sig, sighandler_t handler) {
  return rt::Signal(sig, handler);
}

DOORWAY_EXPORT sighandler_t bsd_signal(int sig, sighandler_t handler) {
  return rt::Signal(sig, handler);
}

DOORWAY_EXPORT sighandler_t ssignal(int sig, sighandler_t handler) {
  return rt::Signal(sig, handler);
}

DOORWAY_EXPORT sighandler_t sysv_signal(int sig, sighandler_t handler) {
  return rt::SysvSignal(sig, handler);
}

DOORWAY_EXPORT sighandler_t __sysv_signal(int sig, sighandler_t handler) {
  return rt::SysvSignal(sig, handler);
}

DOORWAY_EXPORT sighandler_t sigset(int sig, sighandler_t disp) { return rt::Sigset(sig, disp); }

DOORWAY_EXPORT int siginterrupt(int sig, int flag) { return rt::Siginterrupt(sig, flag); }

// A vfork wrapper cannot return into its caller's frame from the child
// without corrupting the parent's stack, so vfork is served by fork: POSIX
// allows it, and a correct vfork child only calls exec or _exit.
DOORWAY_EXPORT pid_t vfork(void) { return Ret(rt::Fork()); }

// Each exec passes the kernel an environment that tells the new program's
// runtime about accelerated connections that cross the exec
// (runtime/inherit.h); if the exec fails, the extra descriptors go.
DOORWAY_EXPORT int execve(const char* path, char* const argv[], char* const envp[]) {
  rt::ExecTarget t{path, false, AT_FDCWD, -1};
  rt::ExecEnv env(envp, &t);
  return DOORWAY_REAL(execve)(path, argv, env.envp());
}

DOORWAY_EXPORT int execv(const char* path, char* const argv[]) {
  rt::ExecTarget t{path, false, AT_FDCWD, -1};
  rt::ExecEnv env(environ, &t);
  return DOORWAY_REAL(execve)(path, argv, env.envp());
}

DOORWAY_EXPORT int execvp(const char* file, char* const argv[]) {
  rt::ExecTarget t{file, true, AT_FDCWD, -1};
  rt::ExecEnv env(environ, &t);
  return DOORWAY_REAL(execvpe)(file, argv, env.envp());
}

DOORWAY_EXPORT int execvpe(const char* file, char* const argv[], char* const envp[]) {
  rt::ExecTarget t{file, true, AT_FDCWD, -1};
  rt::ExecEnv env(envp, &t);
  return DOORWAY_REAL(execvpe)(file, argv, env.envp());
}

DOORWAY_EXPORT int fexecve(int fd, char* const argv[], char* const envp[]) {
  rt::ExecTarget t{nullptr, false, AT_FDCWD, fd};
  rt::ExecEnv env(envp, &t);
  return DOORWAY_REAL(fexecve)(fd, argv, env.envp());
}

DOORWAY_EXPORT int execveat(int dirfd, const char* path, char* const argv[], char* const envp[],
                            int flags) {
  rt::ExecTarget t{path, false, dirfd, (flags & AT_EMPTY_PATH) ? dirfd : -1};
  rt::ExecEnv env(envp, &t);
  return DOORWAY_REAL(execveat)(dirfd, path, argv, env.envp(), flags);
}

// The execl family: glibc implements them with its internal execve, which we
// cannot see, so they are rebuilt here on the execv family. The argument
// vector lives on the caller's stack (alloca must run in the exported
// function's own frame, hence a macro): exec must not allocate, it may be
// called after fork in a multithreaded program.
namespace {
size_t CountArgs(va_list ap) {  // arguments after the first, up to the NULL
  size_t n = 1;
  while (va_arg(ap, const char*) != nullptr) ++n;
  return n;
}
void FillArgs(const char** argv, const char* first, va_list ap, size_t n) {
  argv[0] = first;
  for (size_t i = 1; i < n; ++i) argv[i] = va_arg(ap, const char*);
  argv[n] = nullptr;
}
}  // namespace

#define DOORWAY_COLLECT_ARGV(argv, first, ap)                                       \
  va_list count_##ap;                                                               \
  va_copy(count_##ap, ap);                                                          \
  size_t argc_##ap = CountArgs(count_##ap);                                         \
  va_end(count_##ap);                                                               \
  const char** argv =                                                               \
      static_cast<const char**>(__builtin_alloca((argc_##ap + 1) * sizeof(char*))); \
  FillArgs(argv, first, ap, argc_##ap)

DOORWAY_EXPORT int execl(const char* path, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  DOORWAY_COLLECT_ARGV(argv, arg, ap);
  va_end(ap);
  return execv(path, const_cast<char* const*>(argv));
}

DOORWAY_EXPORT int execlp(const char* file, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  DOORWAY_COLLECT_ARGV(argv, arg, ap);
  va_end(ap);
  return execvp(file, const_cast<char* const*>(argv));
}

DOORWAY_EXPORT int execle(const char* path, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  DOORWAY_COLLECT_ARGV(argv, arg, ap);
  (void)va_arg(ap, const char*);  // the NULL that ends the arguments
  char* const* envp = va_arg(ap, char* const*);
  va_end(ap);
  return execve(path, const_cast<char* const*>(argv), envp);
}

DOORWAY_EXPORT int posix_spawn(pid_t* pid, const char* path,
                               const posix_spawn_file_actions_t* actions,
                               const posix_spawnattr_t* attr, char* const argv[],
                               char* const envp[]) {
  // The child holds its copies of the memfds once spawned; ours go. Like
  // fork, the child gets our connections (glibc's clone does not come
  // through our fork): a close here must not shut them down under it.
  rt::MarkAllShared();
  rt::StatsMarkShared();
  rt::ExecTarget t{path, false, AT_FDCWD, -1};
  rt::ExecEnv env(envp, &t);
  return DOORWAY_REAL(posix_spawn)(pid, path, actions, attr, argv, env.envp());
}

DOORWAY_EXPORT int posix_spawnp(pid_t* pid, const char* file,
                                const posix_spawn_file_actions_t* actions,
                                const posix_spawnattr_t* attr, char* const argv[],
                                char* const envp[]) {
  rt::MarkAllShared();  // as in posix_spawn
  rt::StatsMarkShared();
  rt::ExecTarget t{file, true, AT_FDCWD, -1};
  rt::ExecEnv env(envp, &t);
  return DOORWAY_REAL(posix_spawnp)(pid, file, actions, attr, argv, env.envp());
}
