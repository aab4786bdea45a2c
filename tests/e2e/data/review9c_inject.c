/* Review 9c: run a few syscalls INSIDE another process (ptrace), so a connection to a unix
 * socket is made by that process (SO_PEERCRED names it), send one HTTP request over it and
 * print the answer. usage: inject PID SOCKPATH REQUEST */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <sys/mman.h>
#include <unistd.h>

static pid_t pid;
static struct user_regs_struct saved;
static unsigned long code;

static long sc(long nr, long a, long b, long c, long d, long e, long f) {
    struct user_regs_struct r = saved;
    r.rax = nr; r.rdi = a; r.rsi = b; r.rdx = c; r.r10 = d; r.r8 = e; r.r9 = f;
    r.rip = code; r.orig_rax = -1;
    if (ptrace(PTRACE_SETREGS, pid, 0, &r)) { perror("setregs"); exit(2); }
    if (ptrace(PTRACE_CONT, pid, 0, 0)) { perror("cont"); exit(2); }
    int st;
    for (;;) {
        if (waitpid(pid, &st, __WALL) < 0) { perror("wait"); exit(2); }
        if (WIFSTOPPED(st) && WSTOPSIG(st) == SIGTRAP) break;
        if (WIFEXITED(st) || WIFSIGNALED(st)) { fprintf(stderr, "tracee died\n"); exit(2); }
        ptrace(PTRACE_CONT, pid, 0, WIFSTOPPED(st) ? WSTOPSIG(st) : 0);
    }
    if (ptrace(PTRACE_GETREGS, pid, 0, &r)) { perror("getregs"); exit(2); }
    return (long)r.rax;
}

static void poke(unsigned long addr, const void *buf, size_t n) {
    for (size_t i = 0; i < n; i += 8) {
        unsigned long w = 0;
        memcpy(&w, (const char *)buf + i, n - i < 8 ? n - i : 8);
        if (ptrace(PTRACE_POKEDATA, pid, addr + i, w)) { perror("poke"); exit(2); }
    }
}

static void peek(unsigned long addr, void *buf, size_t n) {
    for (size_t i = 0; i < n; i += 8) {
        errno = 0;
        unsigned long w = ptrace(PTRACE_PEEKDATA, pid, addr + i, 0);
        if (errno) { perror("peek"); exit(2); }
        memcpy((char *)buf + i, &w, n - i < 8 ? n - i : 8);
    }
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: inject PID SOCK REQUEST\n"); return 2; }
    pid = atoi(argv[1]);
    if (ptrace(PTRACE_SEIZE, pid, 0, 0)) { perror("seize"); return 3; }
    if (ptrace(PTRACE_INTERRUPT, pid, 0, 0)) { perror("interrupt"); return 3; }
    int st;
    if (waitpid(pid, &st, __WALL) < 0) { perror("wait"); return 3; }
    if (ptrace(PTRACE_GETREGS, pid, 0, &saved)) { perror("getregs"); return 3; }
    code = saved.rip;
    unsigned long orig;
    errno = 0;
    orig = ptrace(PTRACE_PEEKTEXT, pid, code, 0);
    if (errno) { perror("peektext"); return 3; }
    unsigned long patch = (orig & ~0xffffffUL) | 0xcc050fUL; /* syscall; int3 */
    if (ptrace(PTRACE_POKETEXT, pid, code, patch)) { perror("poketext"); return 3; }
    long mem = sc(SYS_mmap, 0, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem < 0 && mem > -4096) { fprintf(stderr, "mmap %ld\n", mem); return 4; }
    char addr[112] = {0};
    addr[0] = 1; /* AF_UNIX */
    strncpy(addr + 2, argv[2], 107);
    poke(mem, addr, sizeof addr);
    size_t len = strlen(argv[3]);
    poke(mem + 256, argv[3], len);
    long fd = sc(SYS_socket, 1, 1, 0, 0, 0, 0);
    long rc = sc(SYS_connect, fd, mem, 110, 0, 0, 0);
    fprintf(stderr, "socket %ld connect %ld\n", fd, rc);
    if (rc == 0) {
        sc(SYS_write, fd, mem + 256, len, 0, 0, 0);
        for (;;) {
            long n = sc(SYS_read, fd, mem + 16384, 4096, 0, 0, 0);
            if (n <= 0) break;
            char buf[4096];
            peek(mem + 16384, buf, n);
            fwrite(buf, 1, n, stdout);
        }
    }
    sc(SYS_close, fd, 0, 0, 0, 0, 0);
    sc(SYS_munmap, mem, 65536, 0, 0, 0, 0);
    ptrace(PTRACE_POKETEXT, pid, code, orig);
    ptrace(PTRACE_SETREGS, pid, 0, &saved);
    ptrace(PTRACE_DETACH, pid, 0, 0);
    return rc == 0 ? 0 : 5;
}
