// This host's interface addresses, read on first use (endpoint.h).
#include "runtime/endpoint.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <cstring>

#include "gtest/gtest.h"

namespace doorway::runtime {
namespace {

// A non-loopback IPv4 address of this host, if it has one.
bool SomeInterfaceAddress(Endpoint* out) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return false;
  bool found = false;
  for (ifaddrs* i = list; i != nullptr && !found; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET) continue;
    found = EndpointFromSockaddr(i->ifa_addr, sizeof(sockaddr_in), out) && !IsLoopback(*out);
  }
  freeifaddrs(list);
  return found;
}

Endpoint V4(const char* text) {
  Endpoint ep;
  ep.family = AF_INET;
  EXPECT_EQ(inet_pton(AF_INET, text, ep.addr), 1);
  return ep;
}

// The first question reads the list (nothing read it before in this
// process: the runtime's initialisation no longer does).
TEST(LocalAddresses, ReadOnFirstUse) {
  Endpoint mine;
  if (!SomeInterfaceAddress(&mine)) GTEST_SKIP() << "no non-loopback IPv4 interface address";
  mine.port = 80;
  EXPECT_TRUE(IsLocalInterfaceAddress(mine));
  // The same address as an IPv4-mapped IPv6 one.
  Endpoint mapped;
  mapped.family = AF_INET6;
  mapped.addr[10] = 0xff;
  mapped.addr[11] = 0xff;
  memcpy(mapped.addr + 12, mine.addr, 4);
  EXPECT_TRUE(IsLocalInterfaceAddress(mapped));
  // An address of TEST-NET-3 (RFC 5737) that is not this host's (some
  // sandboxes number their interfaces from these ranges).
  const Endpoint other = V4(mine.addr[0] == 203 ? "198.51.100.77" : "203.0.113.77");
  EXPECT_FALSE(IsLocalInterfaceAddress(other));
}

}  // namespace
}  // namespace doorway::runtime
