// doorway-relay CONN_FD TCP_FD (or: doorway-relay serve CTL_FD, the relay
// server, runtime/relay.h RelayServe): run by the runtime (runtime/relay.h) with
// libdoorway.so preloaded and the accelerated connection CONN_FD inherited;
// copies between it and the kernel socket TCP_FD until both directions are
// finished. Not meant to be run by hand.
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "serve") == 0) {
    using Serve = int (*)(int);
    auto serve = reinterpret_cast<Serve>(dlsym(RTLD_DEFAULT, "doorway_relay_serve"));
    if (serve == nullptr) {
      fprintf(stderr, "doorway-relay: libdoorway.so is not loaded\n");
      return 2;
    }
    return serve(atoi(argv[2]));
  }
  if (argc != 3) {
    fprintf(stderr, "usage: doorway-relay CONN_FD TCP_FD (started by libdoorway.so)\n");
    return 2;
  }
  using Relay = int (*)(int, int);
  auto relay = reinterpret_cast<Relay>(dlsym(RTLD_DEFAULT, "doorway_relay"));
  if (relay == nullptr) {
    fprintf(stderr, "doorway-relay: libdoorway.so is not loaded\n");
    return 2;
  }
  return relay(atoi(argv[1]), atoi(argv[2]));
}
