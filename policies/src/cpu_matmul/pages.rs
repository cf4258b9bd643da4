//! Memory for the CPU's weight matrices on 2 MiB pages, where the OS gives them.
//!
//! Why: a decoding step streams every weight once, and on 4 KiB pages that is a page-table walk
//! every 4 KiB (SmolLM2-135M: 23,000 walks a step; in a virtual machine each walk is itself a
//! walk of the host's tables). Linux backs memory with 2 MiB pages only where a whole aligned
//! 2 MiB lies inside a region marked for them (`madvise(MADV_HUGEPAGE)`), and most matrices are
//! smaller than that (SmolLM2's are 0.2-0.6 MB), so matrices are laid side by side in shared
//! chunks of aligned memory. A chunk is freed when the last matrix in it is: the allocator holds
//! only a weak reference to the chunk it is filling.

use std::alloc::Layout;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

const HUGE_PAGE: usize = 2 << 20;
/// A chunk's size; a matrix of a quarter of it or more gets memory of its own.
const CHUNK: usize = 32 << 20;
/// Where a matrix starts inside a chunk: a cache line.
const ALIGN: usize = 64;

/// One allocation, aligned to a 2 MiB page.
struct Chunk {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a chunk is plain memory; `Region`s hand out disjoint parts of it.
unsafe impl Send for Chunk {}
// SAFETY: as above; a region is only read once `Region::from_bytes` has made it.
unsafe impl Sync for Chunk {}

impl Chunk {
    fn new(bytes: usize) -> Self {
        let size = bytes.max(1).next_multiple_of(HUGE_PAGE);
        let Ok(layout) = Layout::from_size_align(size, HUGE_PAGE) else {
            panic!("a weight matrix of {bytes} bytes does not fit in memory");
        };
        // SAFETY: the layout's size is not zero.
        let Some(ptr) = NonNull::new(unsafe { std::alloc::alloc(layout) }) else {
            std::alloc::handle_alloc_error(layout)
        };
        #[cfg(target_os = "linux")]
        // SAFETY: the range is this allocation, untouched so far; the advice changes only how
        // the kernel backs it (a kernel without transparent huge pages ignores it).
        unsafe {
            libc::madvise(ptr.as_ptr().cast(), size, libc::MADV_HUGEPAGE);
        }
        Self { ptr, layout }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// The chunk being filled, and how many of its bytes are taken.
static FILLING: Mutex<(Weak<Chunk>, usize)> = Mutex::new((Weak::new(), 0));

/// Values of a plain-data type `T` in a chunk, read-only once made.
pub(crate) struct Region<T> {
    chunk: Arc<Chunk>,
    offset: usize,
    len: usize,
    _values: PhantomData<T>,
}

impl<T> Clone for Region<T> {
    fn clone(&self) -> Self {
        Self {
            chunk: self.chunk.clone(),
            offset: self.offset,
            len: self.len,
            _values: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Region<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Region({} values)", self.len)
    }
}

impl<T: Copy> Region<T> {
    /// The values whose bytes are `bytes`, then changed in place by `prepare`.
    ///
    /// # Safety
    /// Every bit pattern of `size_of::<T>()` bytes must be a value of `T` (the weight blocks
    /// are `repr(C)` structs of integers, f16 and arrays of them).
    pub(crate) unsafe fn from_bytes(bytes: &[u8], prepare: impl FnOnce(&mut [T])) -> Self {
        const { assert!(std::mem::align_of::<T>() <= ALIGN, "over-aligned values") };
        let size = std::mem::size_of::<T>().max(1);
        assert!(
            bytes.len().is_multiple_of(size),
            "not a whole number of values"
        );
        let len = bytes.len() / size;
        let (chunk, offset) = take(bytes.len());
        // SAFETY: `offset..offset + bytes.len()` lies in the chunk, 64-byte aligned, and no
        // other region holds it (`take`); after the copy it holds `len` values of `T` (any
        // bytes are one, by the caller's promise).
        let values = unsafe {
            let at = chunk.ptr.as_ptr().add(offset);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len());
            std::slice::from_raw_parts_mut(at.cast::<T>(), len)
        };
        prepare(values);
        Self {
            chunk,
            offset,
            len,
            _values: PhantomData,
        }
    }
}

impl<T> std::ops::Deref for Region<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the region holds `len` values of `T` at a 64-byte aligned `offset` in its
        // chunk (`from_bytes`), and the chunk outlives `self`.
        unsafe {
            std::slice::from_raw_parts(self.chunk.ptr.as_ptr().add(self.offset).cast(), self.len)
        }
    }
}

/// `bytes` of memory no region holds yet: the chunk and the offset in it.
fn take(bytes: usize) -> (Arc<Chunk>, usize) {
    if bytes >= CHUNK / 4 {
        return (Arc::new(Chunk::new(bytes)), 0);
    }
    let mut filling = FILLING.lock().unwrap_or_else(|e| e.into_inner());
    let (current, used) = &mut *filling;
    if let Some(chunk) = current.upgrade() {
        if *used + bytes <= chunk.layout.size() {
            let offset = *used;
            *used = (offset + bytes).next_multiple_of(ALIGN);
            return (chunk, offset);
        }
    }
    let chunk = Arc::new(Chunk::new(CHUNK));
    *current = Arc::downgrade(&chunk);
    *used = bytes.next_multiple_of(ALIGN);
    (chunk, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regions keep what they were made of, side by side in a chunk or alone, after the
    /// regions around them are gone.
    #[test]
    fn regions_keep_their_values() {
        let values =
            |seed: u32, n: usize| -> Vec<u32> { (0..n as u32).map(|i| seed ^ i).collect() };
        let bytes = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        // SAFETY: every 4 bytes are a u32.
        let make = |v: &[u32]| unsafe { Region::<u32>::from_bytes(&bytes(v), |r| r[0] += 1) };
        let small: Vec<Region<u32>> = (0..5)
            .map(|i| make(&values(i, 1000 + 37 * i as usize)))
            .collect();
        let big = make(&values(9, CHUNK / 4));
        let kept = [small[1].clone(), small[4].clone()];
        drop(small);
        for (region, seed) in kept.iter().zip([1, 4]) {
            let mut want = values(seed, 1000 + 37 * seed as usize);
            want[0] += 1;
            assert_eq!(&region[..], &want[..]);
            assert_eq!(region.as_ptr() as usize % ALIGN, 0);
        }
        let mut want = values(9, CHUNK / 4);
        want[0] += 1;
        assert_eq!(&big[..], &want[..]);
        assert_eq!(big.as_ptr() as usize % HUGE_PAGE, 0);
    }
}
