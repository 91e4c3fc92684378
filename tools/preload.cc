// bazel run //tools:preload -- prog args...
//
// Runs prog with doorway's runtime preloaded: finds libdoorway.so (in the
// runfiles tree under `bazel run`, next to this binary otherwise), appends its
// absolute path to LD_PRELOAD, returns to the directory `bazel run` was
// started from, and execs prog. exec keeps the pid, so the exit status,
// signals and stdin/stdout/stderr are prog's own.
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace {

const char kUsage[] =
    "usage: preload [--] PROGRAM [ARGS...]\n"
    "Runs PROGRAM with the doorway runtime preloaded (LD_PRELOAD).\n"
    "Under `bazel run //tools:preload -- ...` PROGRAM runs in the directory\n"
    "bazel was started from. Settings are DOORWAY_* environment variables\n"
    "(docs/configuration.md), e.g. DOORWAY_LOG=debug, DOORWAY_DISABLE=1.\n";

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
  if (first < argc && strcmp(argv[first], "--help") == 0) {
    fputs(kUsage, stdout);
    return 0;
  }
  if (first < argc && strcmp(argv[first], "--") == 0) ++first;
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
