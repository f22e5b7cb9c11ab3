//! Deterministic parallel gzip.
//!
//! The uncompressed stream is cut into fixed 1 MiB blocks; each block is
//! deflated on its own (zlib-rs, the given level) and ended with a full
//! flush, the last one with the final block; the pieces are concatenated
//! into one gzip member with the CRC-32 and size of the whole stream. This
//! is pigz's `--independent` layout: any gzip reader decodes it, and the
//! bytes depend only on the input, the block size and the level — never on
//! how many threads compressed them.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// The block size. Part of the output's identity, like the level.
pub const BLOCK: usize = 1 << 20;

/// The gzip header ftl writes: no name, mtime 0, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// How many compression threads to use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

fn deflate_block(level: u32, input: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(input.len() + input.len() / 8 + 1024);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Full
    };
    loop {
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let done = c.total_in() as usize == input.len();
        match status {
            Status::StreamEnd => break,
            _ if done && !last && out.len() < out.capacity() => break,
            _ => out.reserve(out.capacity().max(4096)),
        }
    }
    Ok(out)
}

type Job = (u64, Vec<u8>, bool);

/// The writing half of a parallel compression, given to the producer.
pub struct BlockSink {
    buf: Vec<u8>,
    crc: Crc,
    total: u64,
    next: u64,
    jobs: Option<SyncSender<Job>>,
}

impl BlockSink {
    fn send(&mut self, last: bool) -> io::Result<()> {
        let block = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("compression already finished"))?;
        jobs.send((self.next, block, last))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the layer writer stopped"))?;
        self.next += 1;
        Ok(())
    }

    /// Sends the last (possibly empty) block; returns CRC-32 and size.
    fn finish(&mut self) -> io::Result<(u32, u64)> {
        self.send(true)?;
        self.jobs = None;
        Ok((self.crc.sum(), self.total))
    }
}

impl Write for BlockSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = BLOCK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.crc.update(&data[..n]);
        self.total += n as u64;
        if self.buf.len() == BLOCK {
            self.send(false)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compresses what `produce` writes into its sink as gzip into `out`, using
/// `threads` deflate threads. Returns `out` after the trailer, and the
/// producer's result.
pub fn compress<W: Write + Send, T>(
    out: W,
    level: u32,
    threads: usize,
    produce: impl FnOnce(&mut BlockSink) -> io::Result<T>,
) -> io::Result<(W, T)> {
    let threads = threads.max(1);
    std::thread::scope(|s| {
        let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
        let (res_tx, res_rx) = sync_channel::<io::Result<(u64, Vec<u8>)>>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..threads {
            let (job_rx, res_tx): (Arc<Mutex<Receiver<Job>>>, _) = (job_rx.clone(), res_tx.clone());
            s.spawn(move || loop {
                let job = job_rx.lock().expect("not poisoned").recv();
                let Ok((i, block, last)) = job else { return };
                let r = deflate_block(level, &block, last).map(|c| (i, c));
                if res_tx.send(r).is_err() {
                    return;
                }
            });
        }
        drop(res_tx);
        let writer = s.spawn(move || -> io::Result<W> {
            let mut out = out;
            out.write_all(&HEADER)?;
            let mut pending: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut next = 0u64;
            for r in res_rx {
                let (i, data) = r?;
                pending.insert(i, data);
                while let Some(data) = pending.remove(&next) {
                    out.write_all(&data)?;
                    next += 1;
                }
            }
            Ok(out)
        });
        let mut sink = BlockSink {
            buf: Vec::with_capacity(BLOCK),
            crc: Crc::new(),
            total: 0,
            next: 0,
            jobs: Some(job_tx),
        };
        let produced = produce(&mut sink);
        let trailer = match &produced {
            Ok(_) => sink.finish(),
            Err(_) => {
                sink.jobs = None;
                Ok((0, 0))
            }
        };
        drop(sink);
        let written = writer
            .join()
            .map_err(|_| io::Error::other("the gzip writer thread panicked"))?;
        let value = produced?;
        let (crc, size) = trailer?;
        let mut out = written?;
        out.write_all(&crc.to_le_bytes())?;
        out.write_all(&(size as u32).to_le_bytes())?;
        Ok((out, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(n: usize) -> Vec<u8> {
        // Compressible but not trivial.
        (0..n)
            .map(|i| ((i * 7919) % 251) as u8 ^ (i / 4096) as u8)
            .collect()
    }

    #[test]
    fn same_bytes_for_any_thread_count_and_decodes() {
        for n in [0, 10, BLOCK, BLOCK + 1, 3 * BLOCK + 12345] {
            let data = sample(n);
            let mut outs = Vec::new();
            for threads in [1, 2, 5] {
                let (out, ()) =
                    compress(Vec::new(), 1, threads, |sink| sink.write_all(&data)).unwrap();
                outs.push(out);
            }
            assert!(outs.windows(2).all(|w| w[0] == w[1]), "n={n}");
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(outs[0].as_slice())
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "n={n}");
        }
    }

    #[test]
    fn gunzip_reads_it() {
        let data = sample(2 * BLOCK + 99);
        let (out, ()) = compress(Vec::new(), 6, 2, |sink| sink.write_all(&data)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.gz"), &out).unwrap();
        let got = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(dir.path().join("x.gz"))
            .output()
            .unwrap();
        assert!(got.status.success());
        assert_eq!(got.stdout, data);
    }

    #[test]
    fn a_failing_producer_is_an_error() {
        let r = compress(Vec::new(), 1, 2, |sink| {
            sink.write_all(&sample(BLOCK * 2))?;
            Err::<(), _>(io::Error::other("boom"))
        });
        assert_eq!(r.unwrap_err().to_string(), "boom");
    }
}
