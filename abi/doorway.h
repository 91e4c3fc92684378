/* doorway's own public C interface (besides the POSIX calls it interposes).
 *
 * A program never needs this header: doorway works on unmodified programs.
 * It exists so that tests and tools can ask the runtime what it knows about
 * an fd, and so that a program can tell whether doorway is loaded:
 *
 *   int (*info)(int, struct doorway_socket_info*) =
 *       dlsym(RTLD_DEFAULT, "doorway_fd_info");   // NULL: not loaded
 */
#ifndef DOORWAY_ABI_DOORWAY_H_
#define DOORWAY_ABI_DOORWAY_H_

#ifdef __cplusplus
extern "C" {
#endif

/* Where the runtime learned of a socket. */
enum doorway_origin {
  DOORWAY_ORIGIN_SOCKET = 1,
  DOORWAY_ORIGIN_SOCKETPAIR = 2,
  DOORWAY_ORIGIN_ACCEPT = 3,
  DOORWAY_ORIGIN_INHERITED = 4,
  DOORWAY_ORIGIN_RECEIVED = 5,
  DOORWAY_ORIGIN_DISCOVERED = 6,
};

struct doorway_socket_info {
  int domain;      /* AF_* */
  int type;        /* SOCK_STREAM, ... (no SOCK_NONBLOCK/SOCK_CLOEXEC) */
  int protocol;    /* as SO_PROTOCOL reports it */
  int origin;      /* enum doorway_origin */
  int accelerated; /* 1 if the fd travels over shared memory */
};

/* 0 and *info filled if doorway tracks fd as a socket; -1 otherwise. */
int doorway_fd_info(int fd, struct doorway_socket_info* info);

/* The runtime's version, e.g. "0.1.0". */
const char* doorway_version(void);

#ifdef __cplusplus
}
#endif

#endif /* DOORWAY_ABI_DOORWAY_H_ */
