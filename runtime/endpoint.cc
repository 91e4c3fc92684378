#include "runtime/endpoint.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <pthread.h>

#include <atomic>
#include <cstdio>
#include <cstring>

namespace doorway::runtime {

namespace {

constexpr int kMaxLocal = 64;
// Written at initialisation (and on refresh) by one thread; read racily by
// connect(). A torn read can only make an address look remote (plain TCP),
// never make a remote one look local, because entries are published before
// the count that covers them (release/acquire on g_local_count).
constinit Endpoint g_local[kMaxLocal];
constinit std::atomic<int> g_local_count{0};

// The list is read on first use, not at start-up: getifaddrs (a netlink
// dump) was half of doorway's initialisation (perf of a preloaded
// /bin/true), and most programs only connect to loopback, which needs no
// list. 0: not read yet, 1: being read, 2: read. A caller that finds
// another thread reading gets "not local" (plain TCP for that connection)
// rather than waiting: connect() may run in a signal handler that
// interrupted the reading thread.
constinit std::atomic<int> g_local_state{0};

void EnsureLocalAddresses() {
  if (g_local_state.load(std::memory_order_acquire) == 2) return;
  int expected = 0;
  if (!g_local_state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) return;
  LocalAddressesRefresh();
  g_local_state.store(2, std::memory_order_release);
}

// A fork child whose parent was reading in another thread reads again.
void ResetInChild() {
  if (g_local_state.load(std::memory_order_relaxed) == 1) {
    g_local_count.store(0, std::memory_order_relaxed);
    g_local_state.store(0, std::memory_order_relaxed);
  }
}

[[maybe_unused]] const int g_atfork = pthread_atfork(nullptr, nullptr, ResetInChild);

}  // namespace

bool EndpointFromSockaddr(const sockaddr* sa, socklen_t len, Endpoint* out) {
  if (sa == nullptr) return false;
  Endpoint ep;
  if (sa->sa_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    sockaddr_in in;
    memcpy(&in, sa, sizeof(in));
    ep.family = AF_INET;
    ep.port = ntohs(in.sin_port);
    memcpy(ep.addr, &in.sin_addr, 4);
  } else if (sa->sa_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    sockaddr_in6 in6;
    memcpy(&in6, sa, sizeof(in6));
    ep.family = AF_INET6;
    ep.port = ntohs(in6.sin6_port);
    ep.scope_id = in6.sin6_scope_id;
    memcpy(ep.addr, &in6.sin6_addr, 16);
  } else {
    return false;
  }
  *out = ep;
  return true;
}

socklen_t EndpointToSockaddr(const Endpoint& ep, sockaddr_storage* out) {
  memset(out, 0, sizeof(*out));
  if (ep.family == AF_INET) {
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_port = htons(ep.port);
    memcpy(&in.sin_addr, ep.addr, 4);
    memcpy(out, &in, sizeof(in));
    return sizeof(in);
  }
  sockaddr_in6 in6{};
  in6.sin6_family = AF_INET6;
  in6.sin6_port = htons(ep.port);
  in6.sin6_scope_id = ep.scope_id;
  memcpy(&in6.sin6_addr, ep.addr, 16);
  memcpy(out, &in6, sizeof(in6));
  return sizeof(in6);
}

void CopyOut(const Endpoint& ep, sockaddr* addr, socklen_t* len) {
  if (addr == nullptr || len == nullptr) return;
  sockaddr_storage ss;
  socklen_t full = EndpointToSockaddr(ep, &ss);
  socklen_t n = *len < full ? *len : full;
  if (n > 0) memcpy(addr, &ss, n);
  *len = full;
}

bool IsWildcard(const Endpoint& ep) {
  static constexpr std::uint8_t kZero[16] = {};
  return memcmp(ep.addr, kZero, ep.family == AF_INET ? 4 : 16) == 0;
}

Endpoint Unmapped(const Endpoint& ep) {
  static constexpr std::uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (ep.family != AF_INET6 || memcmp(ep.addr, kMapped, 12) != 0) return ep;
  Endpoint v4;
  v4.family = AF_INET;
  v4.port = ep.port;
  memcpy(v4.addr, ep.addr + 12, 4);
  return v4;
}

bool IsLoopback(const Endpoint& in) {
  Endpoint ep = Unmapped(in);
  if (ep.family == AF_INET) return ep.addr[0] == 127;
  static constexpr std::uint8_t kLoop6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return memcmp(ep.addr, kLoop6, 16) == 0;
}

void LocalAddressesRefresh() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return;
  int n = 0;
  for (ifaddrs* i = list; i != nullptr && n < kMaxLocal; i = i->ifa_next) {
    if (i->ifa_addr == nullptr) continue;
    Endpoint ep;
    socklen_t len = i->ifa_addr->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    if (EndpointFromSockaddr(i->ifa_addr, len, &ep)) {
      ep.port = 0;
      ep.scope_id = 0;
      g_local[n++] = ep;
    }
  }
  freeifaddrs(list);
  g_local_count.store(n, std::memory_order_release);  // pairs with the acquire below
}

bool IsLocalInterfaceAddress(const Endpoint& in) {
  EnsureLocalAddresses();
  Endpoint ep = Unmapped(in);
  int n = g_local_count.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i) {
    const Endpoint& l = g_local[i];
    if (l.family == ep.family && memcmp(l.addr, ep.addr, ep.family == AF_INET ? 4 : 16) == 0) {
      return true;
    }
  }
  return false;
}

bool DoorName(const Endpoint& ep, char* out, std::size_t size) {
  char host[INET6_ADDRSTRLEN];
  if (inet_ntop(ep.family, ep.addr, host, sizeof(host)) == nullptr) return false;
  int n = ep.family == AF_INET ? snprintf(out, size, "tcp4-%s-%u", host, ep.port)
                               : snprintf(out, size, "tcp6-[%s]-%u", host, ep.port);
  return n > 0 && static_cast<std::size_t>(n) < size;
}

}  // namespace doorway::runtime
