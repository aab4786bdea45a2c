/* The native reference floor: bench/floor.py's zero-parsing hop, in C (epoll, one thread).
 *
 *     cc -O2 -o cfloor bench/cfloor.c && ./cfloor LISTEN ENGINE
 *
 * Each accepted connection gets its own new engine connection; bytes are copied both ways
 * untouched, with flow control (a side whose peer cannot take more is not read) and
 * half-close passed on. It parses nothing and judges nothing: it shows what the cheapest
 * possible extra hop costs on this machine (`python -m bench.native`), a reference for the
 * question whether a native proxy core could meet the targets that a Python hop cannot.
 * Not a proxy anyone could deploy, and not part of eci-agent.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF (256 * 1024)

struct side {
    int fd;
    int *closed; /* shared by both sides: the pair was closed (freed after the event batch) */
    struct side *peer;
    char *buf;   /* bytes read from this side, not yet written to the peer */
    size_t off, len;
    int eof;     /* this side finished sending */
    int shut;    /* the peer's write half was shut down after this side's EOF */
};

static int ep;

static void watch(struct side *s) {
    struct epoll_event ev = {0};
    /* Read this side only while nothing of it waits for the peer; wait for writability of
       this side while the peer's bytes wait for it. */
    if (!s->eof && s->len == 0) ev.events |= EPOLLIN;
    if (s->peer->len > 0) ev.events |= EPOLLOUT;
    ev.data.ptr = s;
    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
}

/* Pairs closed during one batch of events; freed once the batch is done, since a later event
   of the same batch may name them. */
static struct side *dead[512];
static int ndead;

static void finish(struct side *s) {
    struct side *p = s->peer;
    if (*s->closed) return;
    *s->closed = 1;
    close(s->fd);
    close(p->fd);
    dead[ndead++] = s < p ? s : p; /* both sides live in one allocation, the lower first */
}

static void bury(void) {
    for (int i = 0; i < ndead; i++) {
        free(dead[i][0].buf);
        free(dead[i][1].buf);
        free(dead[i][0].closed);
        free(dead[i]);
    }
    ndead = 0;
}

static int nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

/* Write what `s` read to its peer; returns -1 if the pair was closed. */
static int flush(struct side *s) {
    struct side *p = s->peer;
    while (s->len > 0) {
        ssize_t n = send(p->fd, s->buf + s->off, s->len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            finish(s);
            return -1;
        }
        s->off += (size_t)n;
        s->len -= (size_t)n;
    }
    if (s->len == 0 && s->eof && !s->shut) {
        shutdown(p->fd, SHUT_WR);
        s->shut = 1;
    }
    if (s->shut && p->shut) {
        finish(s);
        return -1;
    }
    watch(s);
    watch(p);
    return 0;
}

static void readable(struct side *s) {
    ssize_t n = recv(s->fd, s->buf, BUF, 0);
    if (n < 0 && errno == EAGAIN) return;
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        finish(s);
        return;
    }
    s->off = 0;
    s->len = (size_t)n;
    if (n == 0) s->eof = 1;
    flush(s);
}

static int unix_socket(const char *path, int listening) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || strlen(path) >= sizeof a.sun_path) return -1;
    strcpy(a.sun_path, path);
    if (listening) {
        unlink(path);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0) return -1;
    } else if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN ENGINE\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = unix_socket(argv[1], 1);
    if (lfd < 0) {
        perror("listen");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct side *s = evs[i].data.ptr;
            if (s == NULL) {
                int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (cfd < 0) continue;
                int efd = unix_socket(argv[2], 0);
                if (efd < 0) {
                    close(cfd);
                    continue;
                }
                if (nonblocking(efd) < 0) {
                    close(cfd);
                    close(efd);
                    continue;
                }
                struct side *pair = calloc(2, sizeof *pair);
                int *closed = calloc(1, sizeof *closed);
                pair[0] = (struct side){.fd = cfd, .closed = closed, .peer = &pair[1]};
                pair[1] = (struct side){.fd = efd, .closed = closed, .peer = &pair[0]};
                pair[0].buf = malloc(BUF);
                pair[1].buf = malloc(BUF);
                for (int k = 0; k < 2; k++) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &pair[k]};
                    epoll_ctl(ep, EPOLL_CTL_ADD, pair[k].fd, &ev);
                }
                continue;
            }
            if (*s->closed) continue;
            if (evs[i].events & EPOLLOUT) {
                if (flush(s->peer) < 0) continue; /* the peer's bytes wait for s */
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR) && !s->eof && s->len == 0)
                readable(s);
        }
        bury();
    }
}
