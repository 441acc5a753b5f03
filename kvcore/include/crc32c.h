/* CRC-32C (Castagnoli), as the `crc32c` package computes it. SSE4.2 when the
 * CPU has it (checked once at run time), slice-by-8 tables otherwise. */
#ifndef KV_CRC32C_H
#define KV_CRC32C_H
#include <stdint.h>
#include <string.h>

static uint32_t kv_crc32c_table[8][256];
static int kv_crc32c_ready = 0;   /* 0 unknown, 1 software, 2 hardware */

static void kv_crc32c_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82f63b78U : c >> 1;
        kv_crc32c_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = kv_crc32c_table[0][n];
        for (int k = 1; k < 8; k++) {
            c = kv_crc32c_table[0][c & 0xff] ^ (c >> 8);
            kv_crc32c_table[k][n] = c;
        }
    }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    kv_crc32c_ready = __builtin_cpu_supports("sse4.2") ? 2 : 1;
#else
    kv_crc32c_ready = 1;
#endif
}

static uint32_t kv_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n) {
    while (n >= 8) {
        uint64_t w; memcpy(&w, p, 8);
        w ^= crc;
        crc = kv_crc32c_table[7][w & 0xff] ^ kv_crc32c_table[6][(w >> 8) & 0xff] ^
              kv_crc32c_table[5][(w >> 16) & 0xff] ^ kv_crc32c_table[4][(w >> 24) & 0xff] ^
              kv_crc32c_table[3][(w >> 32) & 0xff] ^ kv_crc32c_table[2][(w >> 40) & 0xff] ^
              kv_crc32c_table[1][(w >> 48) & 0xff] ^ kv_crc32c_table[0][w >> 56];
        p += 8; n -= 8;
    }
    while (n--) crc = kv_crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("sse4.2")))
static uint32_t kv_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = crc;
    while (n >= 8) { uint64_t w; memcpy(&w, p, 8); c = __builtin_ia32_crc32di(c, w); p += 8; n -= 8; }
    crc = (uint32_t)c;
    while (n--) crc = __builtin_ia32_crc32qi(crc, *p++);
    return crc;
}
#endif

/* Extend a running CRC (start from 0) over n more bytes. */
static inline uint32_t kv_crc32c(uint32_t crc, const void *buf, size_t n) {
    if (!kv_crc32c_ready) kv_crc32c_init();
    crc = ~crc;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (kv_crc32c_ready == 2) return ~kv_crc32c_hw(crc, (const uint8_t *)buf, n);
#endif
    return ~kv_crc32c_sw(crc, (const uint8_t *)buf, n);
}
#endif
