#include "runtime/config.h"

#include <cstdlib>
#include <cstring>

namespace doorway::runtime {

namespace {

constinit Config g_config;

const char* Lookup(const char* const* envp, const char* name) {
  if (envp == nullptr) return nullptr;
  size_t len = strlen(name);
  for (const char* const* e = envp; *e != nullptr; ++e) {
    if (strncmp(*e, name, len) == 0 && (*e)[len] == '=') return *e + len + 1;
  }
  return nullptr;
}

bool ParseBool(const char* name, const char* value, bool fallback) {
  if (value == nullptr) return fallback;
  if (strcmp(value, "1") == 0 || strcmp(value, "yes") == 0 || strcmp(value, "true") == 0) {
    return true;
  }
  if (strcmp(value, "0") == 0 || strcmp(value, "no") == 0 || strcmp(value, "false") == 0 ||
      value[0] == '\0') {
    return false;
  }
  RawLog(LogLevel::kWarn, "%s=%s is not 0/1/yes/no/true/false; using %d", name, value, fallback);
  return fallback;
}

}  // namespace

Config ParseConfig(const char* const* envp) {
  Config c;
  c.disabled = ParseBool("DOORWAY_DISABLE", Lookup(envp, "DOORWAY_DISABLE"), false);
  c.accelerate = ParseBool("DOORWAY_ACCELERATE", Lookup(envp, "DOORWAY_ACCELERATE"), true);
  if (const char* v = Lookup(envp, "DOORWAY_LOG"); v != nullptr) {
    static constexpr struct {
      const char* name;
      LogLevel level;
    } kLevels[] = {{"off", LogLevel::kOff},     {"", LogLevel::kOff},
                   {"error", LogLevel::kError}, {"warn", LogLevel::kWarn},
                   {"info", LogLevel::kInfo},   {"debug", LogLevel::kDebug}};
    bool found = false;
    for (const auto& l : kLevels) {
      if (strcmp(v, l.name) == 0) {
        c.log_level = l.level;
        found = true;
      }
    }
    if (!found)
      RawLog(LogLevel::kWarn, "DOORWAY_LOG=%s is not off|error|warn|info|debug; using off", v);
  }
  if (const char* v = Lookup(envp, "DOORWAY_LOG_FILE"); v != nullptr && v[0] != '\0') {
    c.log_file = v;
  }
  if (const char* v = Lookup(envp, "DOORWAY_DIR"); v != nullptr && v[0] != '\0') {
    if (v[0] == '/') {
      c.door_dir = v;
    } else {
      RawLog(LogLevel::kWarn, "DOORWAY_DIR=%s is not an absolute path; using the default", v);
    }
  }
  if (const char* v = Lookup(envp, "DOORWAY_ALLOW_UIDS"); v != nullptr && v[0] != '\0') {
    const char* p = v;
    while (*p != '\0') {
      char* end = nullptr;
      unsigned long uid = strtoul(p, &end, 10);
      if (end == p || (*end != ',' && *end != '\0') || uid > 0xfffffffeul) {
        RawLog(LogLevel::kWarn,
               "DOORWAY_ALLOW_UIDS=%s: not a comma-separated list of uids; ignored", v);
        c.allowed_uid_count = 0;
        break;
      }
      if (c.allowed_uid_count < Config::kMaxAllowedUids) {
        c.allowed_uids[c.allowed_uid_count++] = static_cast<unsigned>(uid);
      }
      p = *end == ',' ? end + 1 : end;
    }
  }
  if (const char* v = Lookup(envp, "DOORWAY_FALLBACK"); v != nullptr && v[0] != '\0') {
    if (strcmp(v, "passthrough") == 0) {
      c.fallback = FallbackMode::kPassthrough;
    } else if (strcmp(v, "uring") == 0) {
      c.fallback = FallbackMode::kUring;
    } else if (strcmp(v, "uring-sqpoll") == 0) {
      c.fallback = FallbackMode::kUringSqpoll;
    } else {
      RawLog(LogLevel::kWarn,
             "DOORWAY_FALLBACK=%s is not passthrough|uring|uring-sqpoll; using passthrough", v);
    }
  }
  return c;
}

const Config& GetConfig() { return g_config; }
void SetConfig(const Config& config) { g_config = config; }

}  // namespace doorway::runtime
