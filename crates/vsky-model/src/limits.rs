//! Every bound the model enforces, in one place, with the relations between
//! them checked at compile time.

/// Smallest chunk: the leg metadata area plus at least as much data.
pub const CHUNK_SIZE_BYTES_MIN: u64 = 2 * LEG_META_BYTES;
/// Largest chunk. Bigger chunks make rebuilds coarse and waste space.
pub const CHUNK_SIZE_BYTES_MAX: u64 = 64 << 30;
/// Default chunk size, as the issue asks: 1 GiB.
pub const CHUNK_SIZE_BYTES_DEFAULT: u64 = 1 << 30;
/// Chunks are aligned to this, so every chunk starts on a MiB boundary.
pub const CHUNK_ALIGN_BYTES: u64 = 1 << 20;
/// Per-leg dm-raid metadata area carved from the front of every chunk
/// (superblock at 0, write-intent bitmap at 4 KiB). 1 MiB holds the bitmap
/// of a 64 GiB chunk at the smallest region size dm-raid allows.
pub const LEG_META_BYTES: u64 = 1 << 20;
/// Bytes reserved at the start of every disk for a VastSky label, so chunk 0
/// never overlaps a partition table or filesystem signature area.
pub const DISK_HEADER_BYTES: u64 = 1 << 20;
/// Volume sizes are rounded up to whole 4 KiB blocks (the NBD block size).
pub const VOLUME_BLOCK_BYTES: u64 = 4096;
/// Replica bounds, as the original VastSky had them (2..=9).
pub const REPLICAS_MIN: u8 = 2;
pub const REPLICAS_MAX: u8 = 9;
pub const REPLICAS_DEFAULT: u8 = 2;
/// Mirrored disks in one volume: bounds one allocation's work and the size
/// of one stored volume record.
pub const MIRRORED_DISKS_PER_VOLUME_MAX: u64 = 1 << 20;
/// Chunks on one disk (the chunk index is a u32).
pub const CHUNKS_PER_DISK_MAX: u64 = u32::MAX as u64;
/// Name lengths (servers, volumes, disk classes, labels).
pub const NAME_LEN_MAX: usize = 64;
pub const LABEL_VALUE_LEN_MAX: usize = 128;
pub const LABELS_PER_SERVER_MAX: usize = 32;
pub const DEVICE_PATH_LEN_MAX: usize = 1024;
pub const ADDRESS_LEN_MAX: usize = 256;
pub const DESCRIPTION_LEN_MAX: usize = 1024;
/// Characters of an over-long input quoted back in an error message.
pub const ERROR_PREVIEW_CHARS: usize = 16;
/// Volume metadata bounds: XAPI keeps a handful of keys per VDI.
pub const VOLUME_KEYS_MAX: usize = 128;
pub const VOLUME_KEY_LEN_MAX: usize = 256;
pub const VOLUME_KEY_VALUE_LEN_MAX: usize = 4096;
pub const DISPLAY_NAME_LEN_MAX: usize = 256;
/// Stripe bounds: a stripe spans 2..=64 mirrored disks, with a power-of-two
/// stripe unit between 4 KiB and 1 GiB (dm-striped needs a power of two
/// number of sectors for speed; we require it outright).
pub const STRIPE_WIDTH_MAX: u32 = 64;
pub const STRIPE_UNIT_BYTES_MIN: u64 = 4096;
pub const STRIPE_UNIT_BYTES_MAX: u64 = 1 << 30;
/// A cluster id (32 hex digits today; the bound leaves room and keeps a
/// disk label's fields short).
pub const CLUSTER_ID_LEN_MAX: usize = 64;
/// An agent's description of why it cannot use a disk, as recorded.
pub const DISK_PROBLEM_LEN_MAX: usize = 1024;
/// Bytes of a disk's label at the front of its header (the rest of the
/// header stays zero).
pub const DISK_LABEL_BYTES: usize = 4096;
/// Names of assembled volumes one heartbeat may list (a head's volumes;
/// far more than one host runs).
pub const HEARTBEAT_ASSEMBLED_MAX: usize = 1 << 16;
/// The shortest `--head-grace` the manager takes: with none, any attach
/// elsewhere would take a volume over from a head that is alive. Admins
/// should keep it above three of the agents' heartbeat intervals (5 s by
/// default); tests use a few seconds with 1 s heartbeats.
pub const HEAD_GRACE_SECONDS_MIN: u64 = 2;
/// A grow of an attached volume is refused when its head's agent has been
/// silent this long (four of the agents' default 5 s heartbeats): the head
/// applies the grow, so with none there the volume would be bigger in the
/// manager than on its host.
pub const GROW_HEAD_SILENCE_SECONDS_MAX: u64 = 20;
/// How long the manager's resize answer waits for the head of an attached
/// volume to serve the new size (one long-poll, an assembly of the new
/// mirrored disks, a table swap and a heartbeat; seconds in the lab).
pub const GROW_APPLY_WAIT_SECONDS: u64 = 60;
/// How long a snapshot of an attached thin volume waits for its head to
/// switch the volume onto the new top (a long-poll, the new top's
/// assembly, a pause of milliseconds, a heartbeat; seconds in the lab).
/// Past it the pending snapshot is dropped and the call fails: xapi sees
/// an error, and the volume keeps its new top (docs/design/snapshots.md
/// §5.5.2).
pub const SNAPSHOT_SWITCH_WAIT_SECONDS: u64 = 60;
/// REST requests: the longest URI (path and query) the manager takes;
/// longer ones are answered 414. Every valid request is far shorter.
pub const HTTP_URI_BYTES_MAX: usize = 8 << 10;
/// REST requests: the request line and headers together; larger heads (and
/// more than 100 headers) are answered 431.
pub const HTTP_HEAD_BYTES_MAX: usize = 64 << 10;
/// How many disks' worth of copies one server link carries at full speed,
/// in thousandths. The resync scheduler (`cluster/schedule.rs`) starts no
/// more resyncs sending, nor receiving, through one server's link than
/// this many disks' worth times the per-disk limit (each of a disk's k
/// resyncs gets 1/k of it), and at least half the server's resync slots.
/// More would share the link and copy slower than the rest of the round,
/// which leaves disks idle after them. 6250: a 10 GbE link carries 6.25
/// disks of 200 MB/s, the reference hardware of `vsky-sim`; at 100 servers
/// × 10 disks a server loss took 76 s without the cap, 70 s with it
/// (bound 59 s). A server with fewer disks than that is never capped.
pub const LINK_DISKS_AT_FULL_SPEED_PERMILLE: u64 = 6250;

/// dm-thin's block size in a layer's pool, in 512-byte sectors: 64 KiB,
/// the smallest the kernel takes, so a 4 KiB write into a block a layer
/// has not written copies the least from its parent.
pub const THIN_BLOCK_SECTORS: u32 = 128;
/// A layer's pool metadata: at least 2 MiB (the smallest size the kernel's
/// sizing guide gives), and at most 16 MiB on its first mirrored disk
/// (48 bytes per 64 KiB block, twice over, covers ~10 GiB of data there;
/// pools that grow past that get more metadata as they grow).
pub const THIN_META_BYTES_MIN: u64 = 2 << 20;
pub const THIN_META_BYTES_INITIAL: u64 = 16 << 20;
/// Metadata a pool gets for each data block on the mirrored disks it grows
/// by: dm-thin's sizing guide gives 48 bytes per block; twice that, as on
/// the first mirrored disk, because metadata exhaustion needs an offline
/// repair while data exhaustion only holds writes. About 0.15 % of the
/// data at 64 KiB blocks.
pub const THIN_META_BYTES_PER_BLOCK: u64 = 96;
/// The most metadata dm-thin uses (`THIN_METADATA_MAX_SECTORS`: 255 × 2^14
/// blocks of 4 KiB, about 15.9 GiB); a longer metadata device is ignored
/// past it. At [`THIN_META_BYTES_PER_BLOCK`] that maps about 10.6 TiB of
/// 64 KiB blocks, the largest thin volume.
pub const THIN_META_BYTES_MAX: u64 = 255 * (1 << 14) * 4096;
/// A writable pool grows when its free data falls below this share of its
/// data (or below half a chunk's data, whichever is more): at 1 GiB chunks
/// a writer at 200 MB/s has 2.5 s or more before it would fill the pool,
/// against a heartbeat and about half a second for a head to assemble a
/// new mirrored disk (`docs/benchmarks.md`, activation). Half a chunk, not
/// a whole one, so a thin volume written less than half a chunk keeps one
/// mirrored disk.
pub const POOL_FREE_LOW_PERCENT: u64 = 10;
/// A pool grows when its metadata is more than this share used, whatever
/// its data: the metadata the sizing rule gives should never get there.
pub const POOL_META_HIGH_PERCENT: u64 = 50;
/// Mirrored disks one heartbeat's report can add to one pool: a writer
/// faster than that for a heartbeat or two is held by the kernel
/// (`queue_if_no_space`), not failed, while the next reports add more.
pub const POOL_GROWTH_DISKS_MAX: u64 = 8;
/// The data area of a chunk must hold a pool's smallest metadata and as
/// much data for a thin volume to be created.
pub const THIN_CHUNK_DATA_BYTES_MIN: u64 = 2 * THIN_META_BYTES_MIN;
/// Layers a chain may have below a volume's own: every read of data left
/// in the deepest layer goes through this many stacked thin devices, and
/// a snapshot or clone that would go deeper is refused (delete older
/// snapshots; garbage collection folds them).
pub const CHAIN_DEPTH_MAX: usize = 16;
/// Free chunk space, in percent of the capacity, below which the manager
/// warns (event `capacity_low`) and, below the second, says it is critical
/// (`capacity_critical`): thin volumes' pools grow into it, rebuilds need
/// it. The same marks as the shipped alert rules (`VastskyPoolLowSpace`,
/// `VastskyPoolCriticalSpace`). Back above the first mark plus the margin,
/// it says so (`capacity_ok`); the margin keeps a pool hovering at a mark
/// from flooding the event log.
pub const CAPACITY_LOW_PERCENT: u64 = 15;
pub const CAPACITY_CRITICAL_PERCENT: u64 = 5;
pub const CAPACITY_MARGIN_PERCENT: u64 = 2;
/// Servers reading one snapshot at once (`cluster/readers.rs`): a backup
/// reads it on one host, a few tools on a few; the bound keeps a bad
/// caller from growing one volume record without end.
pub const READERS_PER_VOLUME_MAX: usize = 64;

const _: () = assert!(CHUNK_SIZE_BYTES_MIN > LEG_META_BYTES);
const _: () = assert!(THIN_META_BYTES_MIN.is_multiple_of(THIN_BLOCK_SECTORS as u64 * 512));
const _: () = assert!(THIN_META_BYTES_INITIAL >= THIN_META_BYTES_MIN);
const _: () = assert!(CHUNK_SIZE_BYTES_DEFAULT.is_multiple_of(CHUNK_ALIGN_BYTES));
const _: () = assert!(LEG_META_BYTES.is_multiple_of(CHUNK_ALIGN_BYTES));
const _: () = assert!(DISK_HEADER_BYTES.is_multiple_of(CHUNK_ALIGN_BYTES));
const _: () = assert!(REPLICAS_MIN <= REPLICAS_DEFAULT && REPLICAS_DEFAULT <= REPLICAS_MAX);
const _: () = assert!(STRIPE_UNIT_BYTES_MAX <= CHUNK_SIZE_BYTES_MIN * 1024);
const _: () = assert!(DISK_LABEL_BYTES as u64 <= DISK_HEADER_BYTES);
const _: () = assert!(HTTP_URI_BYTES_MAX < HTTP_HEAD_BYTES_MAX);
