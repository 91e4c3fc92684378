#include "runtime/config.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace doorway::runtime {

const char* const kSettingNames[] = {"DOORWAY_DISABLE",
                                     "DOORWAY_ACCELERATE",
                                     "DOORWAY_LOG",
                                     "DOORWAY_LOG_FILE",
                                     "DOORWAY_DIR",
                                     "DOORWAY_ALLOW_UIDS",
                                     "DOORWAY_FALLBACK",
                                     "DOORWAY_STATS",
                                     "DOORWAY_SPIN_NS",
                                     "DOORWAY_REUSE_DOORS",
                                     "DOORWAY_ASYMMETRIC_FENCE",
                                     nullptr};

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

// Reports a bad setting (always, whatever DOORWAY_LOG says: the user must
// learn that the setting did not take) and remembers its name, so that
// Initialise can take it out of the environment.
void Report(Config* c, const char* name, size_t name_len, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));
void Report(Config* c, const char* name, size_t name_len, const char* fmt, ...) {
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  RawLog(LogLevel::kWarn, "%s", msg);
  if (c->reported_count < Config::kMaxReported) {
    c->reported[c->reported_count] = name;
    c->reported_len[c->reported_count] = name_len;
    ++c->reported_count;
  }
}

bool ParseBool(Config* c, const char* const* envp, const char* name, bool fallback) {
  const char* value = Lookup(envp, name);
  // Empty is the default, as for every setting (DOORWAY_ACCELERATE= must
  // not turn acceleration off).
  if (value == nullptr || value[0] == '\0') return fallback;
  if (strcmp(value, "1") == 0 || strcmp(value, "yes") == 0 || strcmp(value, "true") == 0) {
    return true;
  }
  if (strcmp(value, "0") == 0 || strcmp(value, "no") == 0 || strcmp(value, "false") == 0) {
    return false;
  }
  Report(c, name, strlen(name), "%s=%s is not 1|0|yes|no|true|false; using %d", name, value,
         fallback);
  return fallback;
}

// One of `names` (a null-terminated list), or -1 (reported: the default is used).
int ParseChoice(Config* c, const char* const* envp, const char* name, const char* const* names,
                const char* expected, const char* default_name) {
  const char* v = Lookup(envp, name);
  if (v == nullptr || v[0] == '\0') return -1;
  for (int i = 0; names[i] != nullptr; ++i) {
    if (strcmp(v, names[i]) == 0) return i;
  }
  Report(c, name, strlen(name), "%s=%s is not %s; using %s", name, v, expected, default_name);
  return -1;
}

// Other DOORWAY_* variables that something in doorway reads: they belong to
// the launcher, the test and demo scripts, or carry state from one runtime
// to the next across exec.
constexpr const char* kOtherNames[] = {
    "DOORWAY_INHERIT",        // runtime/inherit.h: connections crossing exec
    "DOORWAY_PRELOAD_SO",     // tools/preload
    "DOORWAY_DISK_CACHE",     // tools/test.sh
    "DOORWAY_DEMO_PRELOAD",   // tools/demo.sh
    "DOORWAY_EXPECT_LOADED",  // tests/conformance
};

void ReportUnknownNames(Config* c, const char* const* envp) {
  if (envp == nullptr) return;
  for (const char* const* e = envp; *e != nullptr; ++e) {
    if (strncmp(*e, "DOORWAY_", 8) != 0) continue;
    const char* eq = strchr(*e, '=');
    size_t len = eq != nullptr ? static_cast<size_t>(eq - *e) : strlen(*e);
    bool known = false;
    for (const char* const* k = kSettingNames; *k != nullptr; ++k) {
      if (strlen(*k) == len && strncmp(*k, *e, len) == 0) known = true;
    }
    for (const char* k : kOtherNames) {
      if (strlen(k) == len && strncmp(k, *e, len) == 0) known = true;
    }
    if (!known) {
      Report(c, *e, len, "%.*s is not a doorway setting (see docs/configuration.md); ignored",
             static_cast<int>(len), *e);
    }
  }
}

}  // namespace

Config ParseConfig(const char* const* envp) {
  Config c;
  c.disabled = ParseBool(&c, envp, "DOORWAY_DISABLE", false);
  c.accelerate = ParseBool(&c, envp, "DOORWAY_ACCELERATE", true);
  c.reuse_doors = ParseBool(&c, envp, "DOORWAY_REUSE_DOORS", true);
  {
    static constexpr const char* kNames[] = {"off", "error", "warn", "info", "debug", nullptr};
    int i = ParseChoice(&c, envp, "DOORWAY_LOG", kNames, "off|error|warn|info|debug", "off");
    if (i >= 0) c.log_level = static_cast<LogLevel>(i);
  }
  if (const char* v = Lookup(envp, "DOORWAY_LOG_FILE"); v != nullptr && v[0] != '\0') {
    c.log_file = v;
  }
  if (const char* v = Lookup(envp, "DOORWAY_DIR"); v != nullptr && v[0] != '\0') {
    if (v[0] == '/') {
      c.door_dir = v;
    } else {
      Report(&c, "DOORWAY_DIR", 11, "DOORWAY_DIR=%s is not an absolute path; using the default", v);
    }
  }
  if (const char* v = Lookup(envp, "DOORWAY_ALLOW_UIDS"); v != nullptr && v[0] != '\0') {
    const char* p = v;
    while (*p != '\0') {
      char* end = nullptr;
      unsigned long uid = strtoul(p, &end, 10);
      if (end == p || (*end != ',' && *end != '\0') || uid > 0xfffffffeul) {
        Report(&c, "DOORWAY_ALLOW_UIDS", 18,
               "DOORWAY_ALLOW_UIDS=%s is not a comma-separated list of uids; using none", v);
        c.allowed_uid_count = 0;
        break;
      }
      if (c.allowed_uid_count < Config::kMaxAllowedUids) {
        c.allowed_uids[c.allowed_uid_count++] = static_cast<unsigned>(uid);
      }
      p = *end == ',' ? end + 1 : end;
    }
  }
  {
    static constexpr const char* kNames[] = {"passthrough", "uring", "uring-sqpoll", nullptr};
    int i = ParseChoice(&c, envp, "DOORWAY_FALLBACK", kNames, "passthrough|uring|uring-sqpoll",
                        "passthrough");
    if (i >= 0) c.fallback = static_cast<FallbackMode>(i);
  }
  {
    static constexpr const char* kNames[] = {"off", "on",  "exit",  "0",    "1",
                                             "no",  "yes", "false", "true", nullptr};
    static constexpr StatsMode kModes[] = {StatsMode::kOff, StatsMode::kOn,  StatsMode::kExit,
                                           StatsMode::kOff, StatsMode::kOn,  StatsMode::kOff,
                                           StatsMode::kOn,  StatsMode::kOff, StatsMode::kOn};
    int i = ParseChoice(&c, envp, "DOORWAY_STATS", kNames, "on|off|exit", "on");
    if (i >= 0) c.stats = kModes[i];
  }
  if (const char* v = Lookup(envp, "DOORWAY_SPIN_NS"); v != nullptr && v[0] != '\0') {
    char* end = nullptr;
    long long ns = strtoll(v, &end, 10);
    if (*end != '\0' || ns < 0 || ns > 1'000'000'000) {
      Report(&c, "DOORWAY_SPIN_NS", 15,
             "DOORWAY_SPIN_NS=%s is not a number of ns in 0..1000000000; using the adaptive "
             "default",
             v);
    } else {
      c.spin_ns = ns;
    }
  }
  c.asymmetric_fence = ParseBool(&c, envp, "DOORWAY_ASYMMETRIC_FENCE", true);
  ReportUnknownNames(&c, envp);
  return c;
}

void ForgetReportedSettings(const Config& c) {
  for (int i = 0; i < c.reported_count; ++i) {
    char name[64];
    if (c.reported_len[i] >= sizeof(name)) continue;
    memcpy(name, c.reported[i], c.reported_len[i]);
    name[c.reported_len[i]] = '\0';
    unsetenv(name);
  }
}

const Config& GetConfig() { return g_config; }
void SetConfig(const Config& config) { g_config = config; }

}  // namespace doorway::runtime
