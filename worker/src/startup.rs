//! Gives the pages of code only start-up needed back to the kernel.
//!
//! A worker compiles its Transform's SQL once, at start-up: parsing and planning run
//! through sqlparser and DataFusion's planner, several MiB of machine code that the
//! processing loop never runs again. Those pages stay mapped (and counted in the
//! process's resident set) until memory runs short. Once the worker is ready (or the
//! group assigned it nothing), it unmaps its executable's read-only pages
//! (`MADV_DONTNEED`), so its resident set is what the loop itself touches; the loop's code faults back from the page cache
//! within its first cycles.
//!
//! Only the executable's own mappings that are private, not writable and hold no private
//! (copied-on-write) page are released: for those, dropping a page and reading it back
//! from the file gives the same bytes, so nothing the process computed is lost. The
//! relocated `.data.rel.ro` (private copies), shared libraries (another thread could
//! unload one and map something else at its address between reading the map and
//! releasing it; the executable stays mapped for the life of the process) and all
//! anonymous memory are left alone.

use std::fs;

/// Releases the executable's unmodified read-only pages; returns how many bytes were
/// resident in the mappings released. Linux only; elsewhere it does nothing.
pub fn release_code_pages() -> std::io::Result<u64> {
    if !cfg!(target_os = "linux") {
        return Ok(0);
    }
    let exe = fs::read_link("/proc/self/exe")?;
    let smaps = fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for m in releasable(&smaps, &exe.to_string_lossy()) {
        madvise_dontneed(m.start, m.end - m.start)?;
        released += m.rss_kib * 1024;
    }
    Ok(released)
}

/// [`release_code_pages`], the first time it is called in this process; logs the outcome.
pub fn release_code_pages_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| match release_code_pages() {
        Ok(bytes) => tracing::debug!(bytes, "released start-up code pages"),
        Err(e) => tracing::warn!(error = %e, "could not release start-up code pages"),
    });
}

/// A mapping of `/proc/self/smaps` that is safe to release.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// The mappings of an smaps text that are private, not writable, map the file `exe`
/// and hold no anonymous (copied) page.
fn releasable(smaps: &str, exe: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    // The mapping being read, whether its header qualifies it, and its anonymous KiB
    // (a mapping whose smaps does not say is left alone).
    let mut current: Option<(Mapping, bool, Option<u64>)> = None;
    let finish = |c: Option<(Mapping, bool, Option<u64>)>, out: &mut Vec<Mapping>| {
        if let Some((m, true, Some(0))) = c {
            out.push(m);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            finish(current.take(), &mut out);
            let perms = fields.next().unwrap_or("");
            // The path is the rest of the line after the offset, device and inode (it
            // may hold spaces).
            let path = fields.nth(3).map_or("", |p| {
                let at = p.as_ptr() as usize - line.as_ptr() as usize;
                line[at..].trim_end()
            });
            let ok = perms.len() == 4
                && perms.as_bytes()[1] == b'-'
                && perms.as_bytes()[3] == b'p'
                && path == exe;
            current = Some((
                Mapping {
                    start,
                    end,
                    rss_kib: 0,
                },
                ok,
                None,
            ));
            continue;
        }
        let Some((m, ok, anonymous)) = current.as_mut() else {
            continue;
        };
        let kib = fields.next().and_then(|v| v.parse::<u64>().ok());
        match (first, kib) {
            ("Rss:", Some(k)) => m.rss_kib = k,
            ("Anonymous:", Some(k)) => *anonymous = Some(k),
            // Device memory (VM_IO) is not page cache: left alone.
            ("VmFlags:", _) if line.split_whitespace().any(|f| f == "io") => *ok = false,
            _ => {}
        }
    }
    finish(current.take(), &mut out);
    out
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn madvise_dontneed(start: usize, len: usize) -> std::io::Result<()> {
    use nix::sys::mman::{MmapAdvise, madvise};
    let Some(addr) = std::ptr::NonNull::new(start as *mut std::ffi::c_void) else {
        return Ok(());
    };
    // SAFETY: `releasable` only yields private, read-only mappings of the executable
    // with no anonymous page, which stay mapped for the life of the process: dropping
    // their pages changes no byte the process can read (the next access reads the same
    // bytes from the file), and no Rust object owns them.
    unsafe { madvise(addr, len, MmapAdvise::MADV_DONTNEED) }.map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn madvise_dontneed(_start: usize, _len: usize) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0400000 r--p 00000000 08:01 123  /usr/bin/weir worker
Size:               4096 kB
Rss:                1024 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
55d0a0400000-55d0a1000000 r-xp 00400000 08:01 123  /usr/bin/weir worker
Size:              12288 kB
Rss:                9000 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
55d0a1000000-55d0a1400000 r--p 01000000 08:01 123  /usr/bin/weir worker
Size:               4096 kB
Rss:                4096 kB
Anonymous:          4000 kB
VmFlags: rd mr mw me ac
55d0a1400000-55d0a1500000 rw-p 01400000 08:01 123  /usr/bin/weir worker
Rss:                 100 kB
Anonymous:            80 kB
55d0a1500000-55d0a1600000 r-xp 01500000 08:01 123  /usr/bin/weir worker
Rss:                 100 kB
7f0000100000-7f0000200000 r-xp 00000000 08:01 456  /usr/lib/libc.so.6
Rss:                 800 kB
Anonymous:             0 kB
55d0a2000000-55d0a3000000 rw-p 00000000 00:00 0    [heap]
Rss:                2000 kB
Anonymous:          2000 kB
7f0000000000-7f0000001000 r--s 00000000 00:05 7    /dev/shm/x
Rss:                   4 kB
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0    [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_the_executables_unmodified_read_only_pages_are_released() {
        // Not: copied pages, writable, a library, shared, no file, or no Anonymous line.
        let got = releasable(SMAPS, "/usr/bin/weir worker");
        assert_eq!(
            got,
            vec![
                Mapping {
                    start: 0x55d0a0000000,
                    end: 0x55d0a0400000,
                    rss_kib: 1024
                },
                Mapping {
                    start: 0x55d0a0400000,
                    end: 0x55d0a1000000,
                    rss_kib: 9000
                },
            ]
        );
    }

    #[test]
    fn releasing_keeps_the_process_working() {
        // This test binary's own code is mapped and resident: some is released, and the
        // code that runs next reads back the same bytes.
        assert!(release_code_pages().unwrap() > 0);
        assert_eq!(format!("{:?}", vec![1, 2, 3]), "[1, 2, 3]");
        assert!(release_code_pages().unwrap() > 0);
    }
}
