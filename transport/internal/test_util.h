// Helpers shared by transport's tests and stress tests (testonly).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace doorway::transport::testing {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kUnderSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
inline constexpr bool kUnderSanitizer = true;
#else
inline constexpr bool kUnderSanitizer = false;
#endif
#else
inline constexpr bool kUnderSanitizer = false;
#endif

#if defined(__SANITIZE_THREAD__)
inline constexpr bool kUnderTsan = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool kUnderTsan = true;
#else
inline constexpr bool kUnderTsan = false;
#endif
#else
inline constexpr bool kUnderTsan = false;
#endif

// splitmix64: deterministic, seedable.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t Next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t Uniform(uint64_t lo, uint64_t hi) { return lo + Next() % (hi - lo + 1); }
};

// The byte stream used by the stress tests: byte i is pattern[i % kPeriod],
// where the period is prime so that no power-of-two ring offset lines up
// with it. `bytes` holds kPeriod + kMaxChunk bytes so any chunk starting
// anywhere in the period is contiguous.
class Pattern {
 public:
  static constexpr uint64_t kPeriod = 1'000'003;
  static constexpr uint64_t kMaxChunk = 1 << 20;
  Pattern() : bytes_(kPeriod + kMaxChunk) {
    Rng r(42);
    for (uint64_t i = 0; i < kPeriod; ++i) bytes_[i] = static_cast<uint8_t>(r.Next());
    for (uint64_t i = kPeriod; i < bytes_.size(); ++i) bytes_[i] = bytes_[i - kPeriod];
  }
  // Pointer to the stream bytes starting at stream position pos (len <= kMaxChunk).
  const uint8_t* At(uint64_t pos) const { return bytes_.data() + pos % kPeriod; }

 private:
  std::vector<uint8_t> bytes_;
};

// Position-dependent checksum of a byte stream (Fletcher-64 style over bytes).
struct Checksum {
  uint64_t a = 1, b = 0;
  void Add(const void* p, size_t n) {
    const uint8_t* c = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) {
      a += c[i];
      b += a;
    }
  }
  uint64_t Value() const { return (b << 32) ^ a ^ (b >> 32); }
};

// Waits for a child, returns its exit status (or 128+signal).
inline int WaitChild(pid_t pid) {
  int st = 0;
  if (waitpid(pid, &st, 0) != pid) return -1;
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return -1;
}

}  // namespace doorway::transport::testing
