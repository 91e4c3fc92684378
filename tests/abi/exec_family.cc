// The execl family, which doorway rebuilds on execv (glibc's own go through
// an internal execve that cannot be interposed): each must run the program
// with the arguments and environment given. Prints what the children print.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

int main() {
  int status = 0;
  if (fork() == 0) {
    execl("/bin/echo", "echo", "execl", "ok", static_cast<char*>(nullptr));
    _exit(9);
  }
  wait(&status);
  if (fork() == 0) {
    execlp("echo", "echo", "execlp", "ok", static_cast<char*>(nullptr));
    _exit(9);
  }
  wait(&status);
  char env0[] = "DOORWAY_EXECLE=ok";
  char* env[] = {env0, nullptr};
  if (fork() == 0) {
    execle("/usr/bin/env", "env", static_cast<char*>(nullptr), env);
    _exit(9);
  }
  wait(&status);
  return 0;
}
