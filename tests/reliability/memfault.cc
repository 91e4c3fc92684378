// Fault injector for memfault_test.sh: preloaded *after* libdoorway.so
// (LD_PRELOAD=libdoorway.so:libmemfault.so), so that it sees both
// libdoorway's direct calls (mmap, memfd_create, ftruncate: the global
// lookup finds no definition in libdoorway and reaches this library before
// libc) and the calls doorway makes through its own dlsym(RTLD_NEXT) table.
// Only calls made from libdoorway.so's code are counted; the program's own
// and libc's internal ones (malloc's mmap) are not.
//
//   MEMFAULT=fn:N[:ERRNO]   the Nth call (1-based) of fn from libdoorway
//                           fails with ERRNO (ENOMEM, ENOSPC, ENFILE...;
//                           default ENOMEM); every other call goes through.
//   MEMFAULT=fn:N+[:ERRNO]  the Nth and every later call fail.
//
// ERRNO may also be EOF, for recvmsg only: the call returns 0 without
// reading, as Linux's non-blocking SEQPACKET recvmsg does when the peer
// queues a message and shuts down between its look at the queue and its
// look at the shutdown (the race behind the Hello retry in runtime/accel.cc
// ReceiveHello).
//
// fn: mmap, memfd_create, ftruncate, fallocate, recvmsg, and the kernel objects
// socket and accept4 (doorway's own, e.g. the door's Unix socket, and the
// program's, which reach the kernel through doorway's table: the program
// then gets the errno itself, as from the kernel). When the fault fires, and
// at exit, a line goes to stderr:
//   memfault: failing mmap call 3 from libdoorway.so+0x1234
//   memfault: mmap fired at call 3 (ENOMEM), 5 calls, caller 0x1234
//   memfault: mmap not fired, 2 calls
// With MEMFAULT_REPORT=path, that path always holds "calls C fired F" (F =
// the call that failed, 0 = none yet), rewritten at every counted call, so
// that a process killed by the test still tells how far it got: a sweep
// over N has covered every call once the Nth call never came.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace {

enum Fn { kMmap, kMemfdCreate, kFtruncate, kFallocate, kSocket, kAccept4, kRecvmsg, kFnCount };
const char* const kNames[kFnCount] = {"mmap",   "memfd_create", "ftruncate", "fallocate",
                                      "socket", "accept4",      "recvmsg"};

struct Spec {
  int fn = -1;
  long nth = 0;
  bool and_later = false;
  int err = ENOMEM;
};

Spec g_spec;
std::atomic<long> g_calls[kFnCount];
std::atomic<long> g_fired_at{0};
std::atomic<uintptr_t> g_fired_caller{0};
uintptr_t g_doorway_base = 0;  // load address of libdoorway.so, 0 if unknown
int g_report_fd = -1;

void Say(const char* s) { (void)syscall(SYS_write, 2, s, strlen(s)); }

int ErrnoByName(const char* s) {
  static const struct {
    const char* name;
    int value;
  } kErr[] = {{"ENOMEM", ENOMEM}, {"ENOSPC", ENOSPC},   {"ENFILE", ENFILE}, {"EMFILE", EMFILE},
              {"EAGAIN", EAGAIN}, {"ENOBUFS", ENOBUFS}, {"EOF", 0}};
  for (const auto& e : kErr) {
    if (strcmp(s, e.name) == 0) return e.value;
  }
  return ENOMEM;
}

const char* ErrnoName(int e) {
  switch (e) {
    case ENOMEM:
      return "ENOMEM";
    case ENOSPC:
      return "ENOSPC";
    case ENFILE:
      return "ENFILE";
    case EMFILE:
      return "EMFILE";
    case EAGAIN:
      return "EAGAIN";
    case ENOBUFS:
      return "ENOBUFS";
    case 0:
      return "EOF";
  }
  return "?";
}

void WriteReport() {
  if (g_report_fd < 0) return;
  char line[64];
  int n = snprintf(line, sizeof(line), "calls %-12ld fired %-12ld\n", g_calls[g_spec.fn].load(),
                   g_fired_at.load());
  (void)syscall(SYS_pwrite64, g_report_fd, line, n, 0);
}

__attribute__((constructor)) void Init() {
  const char* v = getenv("MEMFAULT");
  if (v == nullptr) return;
  char buf[64];
  snprintf(buf, sizeof(buf), "%s", v);
  char* save = nullptr;
  char* name = strtok_r(buf, ":", &save);
  char* nth = strtok_r(nullptr, ":", &save);
  char* err = strtok_r(nullptr, ":", &save);
  if (name == nullptr || nth == nullptr) return;
  for (int i = 0; i < kFnCount; ++i) {
    if (strcmp(name, kNames[i]) == 0) g_spec.fn = i;
  }
  g_spec.nth = strtol(nth, nullptr, 10);
  g_spec.and_later = strchr(nth, '+') != nullptr;
  if (err != nullptr) g_spec.err = ErrnoByName(err);
  if (const char* r = getenv("MEMFAULT_REPORT")) {
    g_report_fd = static_cast<int>(
        syscall(SYS_openat, AT_FDCWD, r, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  }
  WriteReport();
}

void Report() {
  if (g_spec.fn < 0) return;
  char line[200];
  long at = g_fired_at.load();
  if (at > 0) {
    snprintf(line, sizeof(line), "memfault: %s fired at call %ld (%s)%s, %ld calls, caller %#lx\n",
             kNames[g_spec.fn], at, ErrnoName(g_spec.err), g_spec.and_later ? " and later" : "",
             g_calls[g_spec.fn].load(), static_cast<unsigned long>(g_fired_caller.load()));
  } else {
    snprintf(line, sizeof(line), "memfault: %s not fired, %ld calls\n", kNames[g_spec.fn],
             g_calls[g_spec.fn].load());
  }
  Say(line);
}

__attribute__((destructor)) void Fini() { Report(); }

bool FromDoorway(void* caller) {
  Dl_info info;
  if (dladdr(caller, &info) == 0 || info.dli_fname == nullptr) return false;
  if (strstr(info.dli_fname, "libdoorway") == nullptr) return false;
  g_doorway_base = reinterpret_cast<uintptr_t>(info.dli_fbase);
  return true;
}

// True if this call (of fn, made from `caller`) must fail; sets errno.
bool Inject(Fn fn, void* caller) {
  if (g_spec.fn != fn || !FromDoorway(caller)) return false;
  long n = g_calls[fn].fetch_add(1) + 1;
  bool fail = n == g_spec.nth || (g_spec.and_later && n > g_spec.nth);
  if (fail) {
    long expected = 0;
    g_fired_at.compare_exchange_strong(expected, n);
  }
  WriteReport();
  if (fail) {
    if (g_fired_at.load() == n) {
      g_fired_caller = reinterpret_cast<uintptr_t>(caller) - g_doorway_base;
      char line[120];
      snprintf(line, sizeof(line), "memfault: failing %s call %ld from libdoorway.so+%#lx\n",
               kNames[fn], n, static_cast<unsigned long>(g_fired_caller.load()));
      Say(line);
    }
    errno = g_spec.err;
    return true;
  }
  return false;
}

template <typename T>
T Next(const char* name) {
  return reinterpret_cast<T>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

__attribute__((noinline)) void* mmap(void* addr, size_t len, int prot, int flags, int fd,
                                     off_t off) {
  if (Inject(kMmap, __builtin_return_address(0))) return MAP_FAILED;
  return reinterpret_cast<void*>(syscall(SYS_mmap, addr, len, prot, flags, fd, off));
}
void* mmap64(void* addr, size_t len, int prot, int flags, int fd, off_t off)
    __attribute__((alias("mmap")));

__attribute__((noinline)) int memfd_create(const char* name, unsigned flags) {
  if (Inject(kMemfdCreate, __builtin_return_address(0))) return -1;
  return static_cast<int>(syscall(SYS_memfd_create, name, flags));
}

__attribute__((noinline)) int ftruncate(int fd, off_t len) {
  if (Inject(kFtruncate, __builtin_return_address(0))) return -1;
  return static_cast<int>(syscall(SYS_ftruncate, fd, len));
}
int ftruncate64(int fd, off_t len) __attribute__((alias("ftruncate")));

__attribute__((noinline)) int fallocate(int fd, int mode, off_t off, off_t len) {
  if (Inject(kFallocate, __builtin_return_address(0))) return -1;
  static auto real = Next<int (*)(int, int, off_t, off_t)>("fallocate");
  return real(fd, mode, off, len);
}
int fallocate64(int fd, int mode, off_t off, off_t len) __attribute__((alias("fallocate")));

__attribute__((noinline)) int socket(int domain, int type, int protocol) {
  if (Inject(kSocket, __builtin_return_address(0))) return -1;
  static auto real = Next<int (*)(int, int, int)>("socket");
  return real(domain, type, protocol);
}

__attribute__((noinline)) int accept4(int fd, sockaddr* addr, socklen_t* len, int flags) {
  if (Inject(kAccept4, __builtin_return_address(0))) return -1;
  static auto real = Next<int (*)(int, sockaddr*, socklen_t*, int)>("accept4");
  return real(fd, addr, len, flags);
}

__attribute__((noinline)) ssize_t recvmsg(int fd, msghdr* msg, int flags) {
  if (Inject(kRecvmsg, __builtin_return_address(0))) {
    if (g_spec.err != 0) return -1;
    errno = 0;
    msg->msg_controllen = 0;
    msg->msg_flags = 0;
    return 0;
  }
  static auto real = Next<ssize_t (*)(int, msghdr*, int)>("recvmsg");
  return real(fd, msg, flags);
}

}  // extern "C"
