// Accelerated connections across exec (DESIGN §9).
//
// How it works: before an exec, every accelerated connection whose fd
// survives the exec (no FD_CLOEXEC) is described in DOORWAY_INHERIT in the
// new program's environment: its fd, a descriptor of its segment's memfd
// without FD_CLOEXEC, its role, endpoints and whether it is shared. When the
// new program's runtime starts it validates and maps each segment again
// (transport's Attach: the memfd is as untrusted as any peer's), puts the
// connection back at its fd, and removes the variable. A program that will
// not load doorway gets kernel TCP sockets relayed to the connections
// instead (runtime/relay.h).
#ifndef DOORWAY_RUNTIME_INHERIT_H_
#define DOORWAY_RUNTIME_INHERIT_H_

namespace doorway::runtime {

struct ExecTarget;

// An environment for exec: envp plus DOORWAY_INHERIT when accelerated
// connections cross the exec. Holds what it allocated (mmap; safe after
// fork in a multithreaded program) and the memfd copies until Release().
class ExecEnv {
 public:
  // With a target (runtime/relay.h) that will not load doorway, every
  // accelerated connection that survives the exec is handed to a relay
  // first (its fds become kernel TCP sockets); without one, or if the target
  // loads doorway, they are described in DOORWAY_INHERIT.
  explicit ExecEnv(char* const* envp, const struct ExecTarget* target = nullptr);
  ~ExecEnv() { Release(true); }
  ExecEnv(const ExecEnv&) = delete;
  ExecEnv& operator=(const ExecEnv&) = delete;

  // The environment to pass to the kernel (envp itself when nothing
  // crosses the exec).
  char* const* envp() const { return envp_; }
  // After a failed exec (or a posix_spawn, whose child has its copies):
  // closes the memfd copies and frees the environment.
  void Release(bool close_copies);

 private:
  char* const* envp_;
  void* mem_ = nullptr;
  unsigned long mem_size_ = 0;
  int copies_[64];
  int ncopies_ = 0;
};

// At start-up: rebuilds the connections described by DOORWAY_INHERIT in
// envp and removes the variable. Returns how many.
int AdoptInheritedConnections();

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_INHERIT_H_
