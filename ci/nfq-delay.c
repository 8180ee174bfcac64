/* Adds a fixed delay to every packet a network namespace sends: an iptables NFQUEUE rule hands each
 * outgoing packet to this program, which accepts it again `delay_us` microseconds later. It stands in
 * for `tc netem delay` on kernels built without netem (ci/cluster uses it automatically there).
 * Packets are released in arrival order; the sender never blocks (they wait in the kernel's queue).
 *
 *   nfq-delay QUEUE_NUM DELAY_US        (run inside the namespace, as root)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CAP 65536
static uint32_t ids[CAP];
static uint64_t due[CAP];
static size_t head, tail;
static uint64_t delay_ns;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *m, struct nfq_data *d, void *arg) {
  (void)m; (void)arg;
  struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(d);
  if (!ph) return 0;
  uint32_t id = ntohl(ph->packet_id);
  if (tail - head == CAP) return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL); /* full: no delay */
  ids[tail % CAP] = id;
  due[tail % CAP] = now_ns() + delay_ns;
  tail++;
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: nfq-delay QUEUE_NUM DELAY_US\n"); return 2; }
  int qnum = atoi(argv[1]);
  delay_ns = (uint64_t)atoll(argv[2]) * 1000ull;
  struct nfq_handle *h = nfq_open();
  if (!h) { perror("nfq_open"); return 1; }
  nfq_unbind_pf(h, AF_INET);
  if (nfq_bind_pf(h, AF_INET) < 0) { perror("nfq_bind_pf"); return 1; }
  struct nfq_q_handle *qh = nfq_create_queue(h, (uint16_t)qnum, &on_packet, NULL);
  if (!qh) { perror("nfq_create_queue"); return 1; }
  if (nfq_set_mode(qh, NFQNL_COPY_META, 0) < 0) { perror("nfq_set_mode"); return 1; }
  nfq_set_queue_maxlen(qh, CAP);
  int fd = nfq_fd(h);
  char buf[65536];
  fprintf(stderr, "nfq-delay: queue %d, %llu us\n", qnum, (unsigned long long)(delay_ns / 1000));
  for (;;) {
    /* Release everything that is due. */
    uint64_t t = now_ns();
    while (head != tail && due[head % CAP] <= t) {
      nfq_set_verdict(qh, ids[head % CAP], NF_ACCEPT, 0, NULL);
      head++;
    }
    int timeout_ms = -1;
    if (head != tail) {
      uint64_t wait = due[head % CAP] > t ? due[head % CAP] - t : 0;
      timeout_ms = 0;
      if (wait > 1000000) timeout_ms = (int)(wait / 1000000); /* sleep in poll when >= 1 ms away */
    }
    struct pollfd p = {fd, POLLIN, 0};
    int r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno != EINTR) { perror("poll"); return 1; }
    if (r > 0) {
      ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) nfq_handle_packet(h, buf, (int)n);
    }
  }
}
