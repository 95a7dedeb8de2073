// The least a user-space relay can do: accept on 127.0.0.1:LISTEN, dial 127.0.0.1:TARGET, and
// move bytes both ways with splice() (no copy through user space), one blocking thread per
// direction, TCP_NODELAY, no framing, no event loop. Two of these chained give a tunnel's three
// TCP legs at their cheapest: the floor any tunnel on this machine is measured against.
//   min_relay LISTEN_PORT TARGET_PORT
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

struct connection {
  int visitor, target;
  atomic_int directions_left;
};

struct direction {
  struct connection* c;
  int from, to;
};

static void finish(struct connection* c) {
  if (atomic_fetch_sub(&c->directions_left, 1) == 1) {
    close(c->visitor);
    close(c->target);
    free(c);
  }
}

static void* pump(void* arg) {
  struct direction d = *(struct direction*)arg;
  free(arg);
  int pipe_fds[2];
  if (pipe(pipe_fds) == 0) {
    fcntl(pipe_fds[1], F_SETPIPE_SZ, 1 << 20);  // fewer, larger splices; may be refused
    for (;;) {
      ssize_t n = splice(d.from, NULL, pipe_fds[1], NULL, 1 << 20, SPLICE_F_MOVE);
      if (n <= 0) break;
      while (n > 0) {
        ssize_t m = splice(pipe_fds[0], NULL, d.to, NULL, (size_t)n, SPLICE_F_MOVE);
        if (m <= 0) goto broken;
        n -= m;
      }
    }
    shutdown(d.to, SHUT_WR);  // EOF: pass the half-close on
    goto done;
  broken:
    shutdown(d.from, SHUT_RDWR);  // the far side is gone: wake the other direction too
    shutdown(d.to, SHUT_RDWR);
  done:
    close(pipe_fds[0]);
    close(pipe_fds[1]);
  }
  finish(d.c);
  return NULL;
}

static void start_direction(struct connection* c, int from, int to) {
  struct direction* d = malloc(sizeof *d);
  *d = (struct direction){c, from, to};
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  pthread_t thread;
  if (pthread_create(&thread, &attr, pump, d) != 0) {
    free(d);
    shutdown(from, SHUT_RDWR);
    shutdown(to, SHUT_RDWR);
    finish(c);
  }
  pthread_attr_destroy(&attr);
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: min_relay LISTEN_PORT TARGET_PORT\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  const int one = 1;
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in listen_at = loopback(atoi(argv[1]));
  if (bind(listener, (struct sockaddr*)&listen_at, sizeof listen_at) != 0 ||
      listen(listener, 4096) != 0) {
    perror("min_relay: listen");
    return 1;
  }
  struct sockaddr_in target_at = loopback(atoi(argv[2]));
  for (;;) {
    int visitor = accept(listener, NULL, NULL);
    if (visitor < 0) continue;
    int target = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(target, (struct sockaddr*)&target_at, sizeof target_at) != 0) {
      close(visitor);
      close(target);
      continue;
    }
    setsockopt(visitor, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(target, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct connection* c = malloc(sizeof *c);
    c->visitor = visitor;
    c->target = target;
    atomic_init(&c->directions_left, 2);
    start_direction(c, visitor, target);
    start_direction(c, target, visitor);
  }
}
