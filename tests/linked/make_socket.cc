// A shared library that calls socket(): its reference must bind to the
// definition exported by the executable that links //abi:doorway.
#include <sys/socket.h>

extern "C" __attribute__((visibility("default"))) int linked_test_make_socket() {
  return socket(AF_INET, SOCK_STREAM, 0);
}
