//! Bulk copies in and out of the shared region (`SharedMemory::read` /
//! `write`, what the copying API does per command) and through the
//! zero-copy view (`SharedSlice::copy_to`), against a plain `memcpy`
//! between two heap buffers of the same size as the reference.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vscsi_driver::memory::SharedMemory;

fn copies(c: &mut Criterion) {
    let mut g = c.benchmark_group("shared_memory");
    let mem = SharedMemory::new("bench-copy", 1 << 20).unwrap();
    for len in [512usize, 4096, 256 * 1024] {
        g.throughput(Throughput::Bytes(len as u64));
        let mut buf = vec![0x5au8; len];
        g.bench_with_input(BenchmarkId::new("write", len), &len, |b, _| {
            b.iter(|| mem.write(4096, std::hint::black_box(&buf)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("read", len), &len, |b, _| {
            b.iter(|| mem.read(4096, std::hint::black_box(&mut buf)).unwrap())
        });
        let view = mem.slice(4096, len).unwrap();
        g.bench_with_input(BenchmarkId::new("slice_copy_to", len), &len, |b, _| {
            b.iter(|| view.copy_to(std::hint::black_box(&mut buf)))
        });
        let src = vec![0xa5u8; len];
        g.bench_with_input(BenchmarkId::new("heap_memcpy", len), &len, |b, _| {
            b.iter(|| buf.copy_from_slice(std::hint::black_box(&src)))
        });
    }
    g.finish();
}

criterion_group!(benches, copies);
criterion_main!(benches);
