// Accelerated connections across exec (DESIGN §9).
//
// How it works: before an exec, every accelerated connection whose fd
// survives the exec (no FD_CLOEXEC) is described in DOORWAY_INHERIT in the
// new program's environment: its fd, a descriptor of its segment's memfd
// without FD_CLOEXEC, its role, endpoints and whether it is shared. When the
// new program's runtime starts it validates and maps each segment again
// (transport's Attach: the memfd is as untrusted as any peer's), puts the
// connection back at its fd, and removes the variable. A program that does
// not load doorway gets the door's Unix socket as is: it cannot use it as
// TCP (issue 6), but nothing leaks and the peer sees EOF when it exits.
#ifndef DOORWAY_RUNTIME_INHERIT_H_
#define DOORWAY_RUNTIME_INHERIT_H_

namespace doorway::runtime {

// An environment for exec: envp plus DOORWAY_INHERIT when accelerated
// connections cross the exec. Holds what it allocated (mmap; safe after
// fork in a multithreaded program) and the memfd copies until Release().
class ExecEnv {
 public:
  explicit ExecEnv(char* const* envp);
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
