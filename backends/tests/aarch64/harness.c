/* Runs the aarch64 look-up-table kernels of both generators on one call's
 * arguments read from a file, and writes both outputs: the harness
 * backends/tests/aarch64_kernels.rs links and runs under qemu-aarch64.
 *
 * Input (little-endian): u64 groups, blocks_per_group, then the byte sizes
 * of tables, act_scales, codes, scales and out; then those five arrays.
 * Output: out after lut_llvm, then out after lut_cranelift. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void kernel(const uint8_t *tables, const float *act_scales, const uint8_t *codes,
                    const float *scales, float *out, uint64_t groups, uint64_t blocks_per_group);
extern kernel lut_llvm, lut_cranelift;

static void *read_part(FILE *f, uint64_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "harness: short input\n");
        exit(2);
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: harness IN OUT\n");
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in) {
        perror(argv[1]);
        return 2;
    }
    uint64_t head[7];
    if (fread(head, sizeof head, 1, in) != 1) {
        fprintf(stderr, "harness: short header\n");
        return 2;
    }
    void *parts[5];
    for (int i = 0; i < 5; i++) parts[i] = read_part(in, head[2 + i]);
    fclose(in);
    FILE *out = fopen(argv[2], "wb");
    if (!out) {
        perror(argv[2]);
        return 2;
    }
    kernel *kernels[2] = {lut_llvm, lut_cranelift};
    for (int k = 0; k < 2; k++) {
        float *o = malloc(head[6]);
        memcpy(o, parts[4], head[6]);
        kernels[k](parts[0], parts[1], parts[2], parts[3], o, head[0], head[1]);
        fwrite(o, 1, head[6], out);
        free(o);
    }
    return fclose(out) == 0 ? 0 : 1;
}
