/* BLAKE2b (RFC 7693), keyed and personalized, for the peer frame MAC (kvnet/peer/mac.pyx).
 *
 * The compression and padding are RFC 7693's reference code (its appendix C, written out
 * for this header), with the parameter block's personalization (RFC 7693 section 2.5:
 * bytes 48..63, XORed into h[6] and h[7]) that Python's hashlib.blake2b(person=...) sets:
 * tests/kvnet/peer/test_mac.py checks every tag against hashlib. One state is set up per
 * connection direction and copied per frame (a struct copy), so a tag costs the blocks of
 * its frame and nothing else. Not constant-time on lengths (they are not secret). */
#ifndef KV_BLAKE2B_H
#define KV_BLAKE2B_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

typedef struct {
    uint8_t b[128];     /* input buffer */
    uint64_t h[8];      /* chained state */
    uint64_t t[2];      /* total number of bytes */
    size_t c;           /* pointer for b[] */
    size_t outlen;      /* digest size */
} kv_blake2b_ctx;

#define KV_ROTR64(x, y) (((x) >> (y)) ^ ((x) << (64 - (y))))

#define KV_B2B_G(a, b, c, d, x, y) {        \
    v[a] = v[a] + v[b] + x;                 \
    v[d] = KV_ROTR64(v[d] ^ v[a], 32);      \
    v[c] = v[c] + v[d];                     \
    v[b] = KV_ROTR64(v[b] ^ v[c], 24);      \
    v[a] = v[a] + v[b] + y;                 \
    v[d] = KV_ROTR64(v[d] ^ v[a], 16);      \
    v[c] = v[c] + v[d];                     \
    v[b] = KV_ROTR64(v[b] ^ v[c], 63); }

static const uint64_t kv_blake2b_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL,
    0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL,
    0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL
};

static const uint8_t kv_blake2b_sigma[12][16] = {
    { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 },
    { 14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3 },
    { 11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4 },
    { 7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8 },
    { 9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13 },
    { 2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9 },
    { 12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11 },
    { 13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10 },
    { 6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5 },
    { 10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0 },
    { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 },
    { 14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3 }
};

#define KV_B2B_ROUND(r) {                                                            \
    KV_B2B_G(0, 4, 8, 12, m[kv_blake2b_sigma[r][0]], m[kv_blake2b_sigma[r][1]]);      \
    KV_B2B_G(1, 5, 9, 13, m[kv_blake2b_sigma[r][2]], m[kv_blake2b_sigma[r][3]]);      \
    KV_B2B_G(2, 6, 10, 14, m[kv_blake2b_sigma[r][4]], m[kv_blake2b_sigma[r][5]]);     \
    KV_B2B_G(3, 7, 11, 15, m[kv_blake2b_sigma[r][6]], m[kv_blake2b_sigma[r][7]]);     \
    KV_B2B_G(0, 5, 10, 15, m[kv_blake2b_sigma[r][8]], m[kv_blake2b_sigma[r][9]]);     \
    KV_B2B_G(1, 6, 11, 12, m[kv_blake2b_sigma[r][10]], m[kv_blake2b_sigma[r][11]]);   \
    KV_B2B_G(2, 7, 8, 13, m[kv_blake2b_sigma[r][12]], m[kv_blake2b_sigma[r][13]]);    \
    KV_B2B_G(3, 4, 9, 14, m[kv_blake2b_sigma[r][14]], m[kv_blake2b_sigma[r][15]]); }

static inline uint64_t kv_b2b_get64(const uint8_t *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t w;
    memcpy(&w, p, 8);                   /* one load */
    return w;
#else
    return ((uint64_t)p[0]) ^ ((uint64_t)p[1] << 8) ^ ((uint64_t)p[2] << 16) ^
           ((uint64_t)p[3] << 24) ^ ((uint64_t)p[4] << 32) ^ ((uint64_t)p[5] << 40) ^
           ((uint64_t)p[6] << 48) ^ ((uint64_t)p[7] << 56);
#endif
}

static void kv_blake2b_compress(kv_blake2b_ctx *ctx, int last)
{
    int i;
    uint64_t v[16], m[16];

    for (i = 0; i < 8; i++) {
        v[i] = ctx->h[i];
        v[i + 8] = kv_blake2b_iv[i];
    }
    v[12] ^= ctx->t[0];
    v[13] ^= ctx->t[1];
    if (last)
        v[14] = ~v[14];
    for (i = 0; i < 16; i++)
        m[i] = kv_b2b_get64(&ctx->b[8 * i]);
    /* the twelve rounds written out: each message word's index a constant, so the words
     * stay in registers (a loop over the rounds reads them through the sigma table) */
    KV_B2B_ROUND(0); KV_B2B_ROUND(1); KV_B2B_ROUND(2); KV_B2B_ROUND(3);
    KV_B2B_ROUND(4); KV_B2B_ROUND(5); KV_B2B_ROUND(6); KV_B2B_ROUND(7);
    KV_B2B_ROUND(8); KV_B2B_ROUND(9); KV_B2B_ROUND(10); KV_B2B_ROUND(11);
    for (i = 0; i < 8; i++)
        ctx->h[i] ^= v[i] ^ v[i + 8];
}

static inline void kv_blake2b_update(kv_blake2b_ctx *ctx, const void *in, size_t inlen)
{
    const uint8_t *p = (const uint8_t *)in;
    while (inlen > 0) {
        if (ctx->c == 128) {            /* buffer full: compress it (not the last block) */
            ctx->t[0] += ctx->c;
            if (ctx->t[0] < ctx->c)
                ctx->t[1]++;
            kv_blake2b_compress(ctx, 0);
            ctx->c = 0;
        }
        size_t take = 128 - ctx->c;
        if (take > inlen)
            take = inlen;
        memcpy(ctx->b + ctx->c, p, take);
        ctx->c += take;
        p += take;
        inlen -= take;
    }
}

/* outlen 1..64, keylen 0..64, personlen 0..16 (zero-padded, as hashlib pads it); -1 if not */
static int kv_blake2b_init(kv_blake2b_ctx *ctx, size_t outlen, const void *key, size_t keylen,
                           const void *person, size_t personlen)
{
    size_t i;
    uint8_t pers[16];

    if (outlen == 0 || outlen > 64 || keylen > 64 || personlen > 16)
        return -1;
    for (i = 0; i < 8; i++)
        ctx->h[i] = kv_blake2b_iv[i];
    ctx->h[0] ^= 0x01010000 ^ (keylen << 8) ^ outlen;
    memset(pers, 0, sizeof(pers));
    if (personlen)
        memcpy(pers, person, personlen);
    ctx->h[6] ^= kv_b2b_get64(pers);
    ctx->h[7] ^= kv_b2b_get64(pers + 8);
    ctx->t[0] = 0;
    ctx->t[1] = 0;
    ctx->c = 0;
    ctx->outlen = outlen;
    memset(ctx->b, 0, sizeof(ctx->b));
    if (keylen > 0) {
        kv_blake2b_update(ctx, key, keylen);
        ctx->c = 128;                   /* the key block is a whole block */
    }
    return 0;
}

static inline void kv_blake2b_final(kv_blake2b_ctx *ctx, void *out)
{
    size_t i;
    ctx->t[0] += ctx->c;
    if (ctx->t[0] < ctx->c)
        ctx->t[1]++;
    while (ctx->c < 128)
        ctx->b[ctx->c++] = 0;
    kv_blake2b_compress(ctx, 1);
    for (i = 0; i < ctx->outlen; i++)
        ((uint8_t *)out)[i] = (ctx->h[i >> 3] >> (8 * (i & 7))) & 0xFF;
}

#endif
