// bazel run //tools:preload -- prog args...
//
// Runs prog with doorway's runtime preloaded: finds libdoorway.so (in the
// runfiles tree under `bazel run`, next to this binary otherwise), appends its
// absolute path to LD_PRELOAD, returns to the directory `bazel run` was
// started from, and execs prog. exec keeps the pid, so the exit status,
// signals and stdin/stdout/stderr are prog's own. Its own options (before
// "--") only set DOORWAY_* variables (kFlags), so that the runtime has one
// source of settings (runtime/config.cc).
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace {

const char kUsage[] =
    "usage: preload [OPTIONS] [--] PROGRAM [ARGS...]\n"
    "Runs PROGRAM with the doorway runtime preloaded (LD_PRELOAD): its local TCP\n"
    "connections to other programs under doorway travel through shared memory.\n"
    "Under `bazel run //tools:preload -- ...` PROGRAM runs in the directory\n"
    "bazel was started from.\n"
    "\n"
    "Options (before PROGRAM; each sets the DOORWAY_* variable named, for PROGRAM\n"
    "and every program it starts):\n"
    "  --log=LEVEL      doorway's own log: off, error, warn, info or debug (DOORWAY_LOG)\n"
    "  --log-file=PATH  append the log to PATH instead of stderr (DOORWAY_LOG_FILE)\n"
    "  --disable        load doorway but accelerate and track nothing (DOORWAY_DISABLE=1)\n"
    "  --stats          at exit, each process that used Internet sockets logs one line:\n"
    "                   accelerated connections, bytes and messages sent and received\n"
    "                   through them (DOORWAY_STATS=exit; to stderr or the log file).\n"
    "                   Live counters: bazel run //tools:stat\n"
    "  --dir=DIR        the door directory (DOORWAY_DIR)\n"
    "  --help           this text\n"
    "\n"
    "Every setting is a DOORWAY_* environment variable (docs/configuration.md).\n";

// The launcher's options and the variables they set.
struct Flag {
  const char* name;  // "--log=" takes a value, "--disable" none
  const char* variable;
  const char* fixed_value;  // for flags without a value
};
constexpr Flag kFlags[] = {
    {"--log=", "DOORWAY_LOG", nullptr},    {"--log-file=", "DOORWAY_LOG_FILE", nullptr},
    {"--disable", "DOORWAY_DISABLE", "1"}, {"--stats", "DOORWAY_STATS", "exit"},
    {"--dir=", "DOORWAY_DIR", nullptr},
};

// Applies the option at arg; false if it is not one.
bool ApplyFlag(const char* arg) {
  for (const Flag& f : kFlags) {
    size_t n = strlen(f.name);
    if (f.fixed_value != nullptr) {
      if (strcmp(arg, f.name) != 0) continue;
      setenv(f.variable, f.fixed_value, 1);
      return true;
    }
    if (strncmp(arg, f.name, n) != 0) continue;
    if (arg[n] == '\0') {
      fprintf(stderr, "preload: %s needs a value\n", arg);
      exit(2);
    }
    setenv(f.variable, arg + n, 1);
    return true;
  }
  return false;
}

bool Exists(const std::string& path) { return access(path.c_str(), R_OK) == 0; }

std::string SelfDir() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  buf[n] = '\0';
  std::string s(buf);
  return s.substr(0, s.rfind('/'));
}

std::string FindRuntime(const char* argv0) {
  std::vector<std::string> candidates;
  if (const char* v = getenv("DOORWAY_PRELOAD_SO"); v != nullptr && *v != '\0') {
    candidates.emplace_back(v);
  }
  if (const char* r = getenv("RUNFILES_DIR"); r != nullptr) {
    candidates.push_back(std::string(r) + "/doorway/abi/libdoorway.so");
  }
  candidates.push_back(std::string(argv0) + ".runfiles/doorway/abi/libdoorway.so");
  std::string dir = SelfDir();
  candidates.push_back(dir + "/preload.runfiles/doorway/abi/libdoorway.so");
  candidates.push_back(dir + "/../abi/libdoorway.so");  // bazel-bin layout
  candidates.push_back(dir + "/libdoorway.so");         // installed side by side
  for (const std::string& c : candidates) {
    if (!Exists(c)) continue;
    char real[PATH_MAX];
    if (realpath(c.c_str(), real) != nullptr) return real;
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  int first = 1;
  // Options until "--" or the first argument that is not one (PROGRAM).
  while (first < argc && strncmp(argv[first], "--", 2) == 0) {
    const char* arg = argv[first];
    if (strcmp(arg, "--") == 0) {
      ++first;
      break;
    }
    if (strcmp(arg, "--help") == 0) {
      fputs(kUsage, stdout);
      return 0;
    }
    if (!ApplyFlag(arg)) {
      fprintf(stderr, "preload: unknown option %s\n%s", arg, kUsage);
      return 2;
    }
    ++first;
  }
  if (first >= argc) {
    fputs(kUsage, stderr);
    return 2;
  }
  std::string so = FindRuntime(argv[0]);
  if (so.empty()) {
    fprintf(stderr, "preload: cannot find libdoorway.so (set DOORWAY_PRELOAD_SO)\n");
    return 127;
  }
  std::string preload = so;
  if (const char* old = getenv("LD_PRELOAD"); old != nullptr && *old != '\0') {
    std::string o(old);
    preload = (o.find(so) != std::string::npos) ? o : o + ":" + so;
  }
  setenv("LD_PRELOAD", preload.c_str(), 1);
  // bazel run starts us inside the runfiles tree; the program expects the
  // directory the user was in.
  if (const char* wd = getenv("BUILD_WORKING_DIRECTORY"); wd != nullptr && *wd != '\0') {
    if (chdir(wd) != 0) {
      fprintf(stderr, "preload: cannot chdir to %s: %s\n", wd, strerror(errno));
      return 127;
    }
  }
  // Runfiles variables describe this launcher, not the program.
  unsetenv("RUNFILES_DIR");
  unsetenv("RUNFILES_MANIFEST_FILE");
  unsetenv("JAVA_RUNFILES");
  execvp(argv[first], argv + first);
  fprintf(stderr, "preload: cannot run %s: %s\n", argv[first], strerror(errno));
  return errno == ENOENT ? 127 : 126;
}
