// TCP-level addresses of accelerated connections, and which destinations
// may have a door (DESIGN §4).
#ifndef DOORWAY_RUNTIME_ENDPOINT_H_
#define DOORWAY_RUNTIME_ENDPOINT_H_

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>

namespace doorway::runtime {

// An AF_INET or AF_INET6 address and port, trivially copyable so it can
// travel in the door handshake. IPv4 addresses use addr[0..3].
struct Endpoint {
  std::uint16_t family = 0;  // AF_INET or AF_INET6
  std::uint16_t port = 0;    // host byte order
  std::uint32_t scope_id = 0;
  std::uint8_t addr[16] = {};
};

// False unless sa is a well-formed AF_INET/AF_INET6 address.
bool EndpointFromSockaddr(const sockaddr* sa, socklen_t len, Endpoint* out);
// Writes the sockaddr_in/sockaddr_in6 form; returns its length.
socklen_t EndpointToSockaddr(const Endpoint& ep, sockaddr_storage* out);
// Copies ep into (addr, *len) with accept(2)/getsockname(2)'s truncation
// rules: *len becomes the full size.
void CopyOut(const Endpoint& ep, sockaddr* addr, socklen_t* len);

bool IsWildcard(const Endpoint& ep);
bool IsLoopback(const Endpoint& ep);
// An IPv4-mapped IPv6 address (::ffff:a.b.c.d) turned into IPv4; other
// endpoints unchanged.
Endpoint Unmapped(const Endpoint& ep);
// Whether ep is one of this host's interface addresses (a cache read at
// the first call; LocalAddressesRefresh() re-reads it).
bool IsLocalInterfaceAddress(const Endpoint& ep);
void LocalAddressesRefresh();

// "tcp4-127.0.0.1-8080" / "tcp6-[::1]-8080" (the door's file name).
// Returns false if it does not fit.
bool DoorName(const Endpoint& ep, char* out, std::size_t size);

}  // namespace doorway::runtime

#endif  // DOORWAY_RUNTIME_ENDPOINT_H_
