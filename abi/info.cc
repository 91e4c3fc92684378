// doorway's own exported functions (abi/doorway.h).
// Fortified glibc headers (Bazel's opt mode sets _FORTIFY_SOURCE) declare
// read/recv/poll as inline wrappers that would clash with our definitions.
#undef _FORTIFY_SOURCE

#include "abi/doorway.h"
#include "abi/internal/trampoline.h"
#include "runtime/relay.h"

namespace rt = doorway::runtime;

DOORWAY_EXPORT int doorway_fd_info(int fd, struct doorway_socket_info* info) {
  rt::SocketFile f;
  bool accelerated = false;
  if (!rt::Describe(fd, &f, &accelerated)) return -1;
  info->domain = f.domain;
  info->type = f.type;
  info->protocol = f.protocol;
  info->origin = static_cast<int>(f.origin);
  info->accelerated = accelerated ? 1 : 0;
  return 0;
}

DOORWAY_EXPORT const char* doorway_version(void) { return "0.1.0"; }

// For doorway-relay (abi/relay_main.cc), found with dlsym.
DOORWAY_EXPORT int doorway_relay(int conn_fd, int tcp_fd) {
  if (!rt::IsAccelerated(conn_fd)) return 2;
  return rt::RelayLoop(conn_fd, tcp_fd);
}

// doorway-relay serve CTL (runtime/relay.h RelayServe).
DOORWAY_EXPORT int doorway_relay_serve(int ctl) { return rt::RelayServe(ctl); }
