/* SPDX-License-Identifier: MIT */
/*
 * The copy engine is written here rather than taken from a library: none of ours copies a tree
 * (libmount, libcryptsetup, ... do not), and running cp or rsync would mean shipping them in the
 * initrd and forking per copy. It is a walk, a work list and two threads.
 */
#define _GNU_SOURCE
#include "seed.h"
#include "log.h"
#include "beneath.h"
#include "persist.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <nettle/sha2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>

/*
 * Four copiers: a cold source disk answers several reads in flight faster than one or two, and
 * the copiers mostly wait for it (measured: see README "Benchmark").
 */
#define COPY_THREADS 4
#define COPY_CHUNK (64u << 20)
/* Entries live in blocks that never move, so the copiers can read them while the walk adds. */
#define BLOCK_SHIFT 12
#define BLOCK_LEN (1u << BLOCK_SHIFT)
#define MAX_BLOCKS (1u << 15) /* 134 M entries */

/* ---- pure helpers ------------------------------------------------------------------------- */

void seed_progress_text(uint64_t done, uint64_t total, uint64_t elapsed_ms, char *out,
			size_t out_len)
{
	unsigned pct = total ? (unsigned)(done * 100 / total) : 100;
	uint64_t rate = elapsed_ms ? done * 1000 / elapsed_ms : 0; /* bytes per second */
	uint64_t mb = 1000 * 1000;
	if (rate == 0 || done >= total)
		snprintf(out, out_len, "%u%% (%llu MB of %llu MB)", pct,
			 (unsigned long long)(done / mb), (unsigned long long)(total / mb));
	else
		snprintf(out, out_len, "%u%% (%llu MB of %llu MB, %llu MB/s, ETA %llu s)", pct,
			 (unsigned long long)(done / mb), (unsigned long long)(total / mb),
			 (unsigned long long)(rate / mb),
			 (unsigned long long)((total - done + rate - 1) / rate));
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

void seed_store_identity(char **names, size_t n, char *out, size_t out_len)
{
	struct sha256_ctx h;
	uint8_t d[SHA256_DIGEST_SIZE];
	qsort(names, n, sizeof(*names), cmp_str);
	sha256_init(&h);
	for (size_t i = 0; i < n; i++)
		sha256_update(&h, strlen(names[i]) + 1, (const uint8_t *)names[i]);
	sha256_digest(&h, sizeof(d), d);
	char hex[17];
	hex_encode(d, 8, hex);
	snprintf(out, out_len, "store:%s", hex);
}

/* ---- small file-system helpers ------------------------------------------------------------ */

/* The names in dir (without . and ..), unsorted; the caller frees each and the array. */
static int list_dir(const char *dir, char ***names, size_t *n)
{
	*names = NULL;
	*n = 0;
	DIR *d = opendir(dir);
	if (!d)
		return -errno;
	size_t cap = 0;
	struct dirent *e;
	int r = 0;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (*n == cap) {
			cap = cap ? cap * 2 : 256;
			char **grown = realloc(*names, cap * sizeof(char *));
			if (!grown) {
				r = -ENOMEM;
				break;
			}
			*names = grown;
		}
		if (!((*names)[*n] = strdup(e->d_name))) {
			r = -ENOMEM;
			break;
		}
		(*n)++;
	}
	closedir(d);
	return r;
}

static void free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

/* rm -rf path (it may hold read-only directories: we run as root). */
static int remove_tree(const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	return nftw(path, rm_entry, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0 ? -errno : 0;
}

static int sync_path(const char *path)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	return syncfs(fd) < 0 ? -errno : 0;
}

int seed_factory_identity(const char *root, char *out, size_t out_len)
{
	char path[PATH_MAX];
	_cleanup_free_ char *text = NULL;
	snprintf(path, sizeof(path), "%s%s", root, FACTORY_ID_FILE);
	if (read_file(path, 4096, &text, NULL) == 0) {
		text[strcspn(text, "\r\n")] = '\0';
		if (persist_identity_valid(text)) {
			snprintf(out, out_len, "%s", text);
			return 0;
		}
		log_warn(FACTORY_ID_FILE " is not an identity (1 to 127 of A-Z a-z 0-9 . _ : + @ "
					 "-); using the store's instead");
	}
	char **names;
	size_t n;
	snprintf(path, sizeof(path), "%s/nix/store", root);
	int r = list_dir(path, &names, &n);
	if (r < 0) {
		free_names(names, n);
		return r;
	}
	seed_store_identity(names, n, out, out_len);
	free_names(names, n);
	return 0;
}

/* ---- the tree copy ------------------------------------------------------------------------ */

enum kind { K_DIR, K_FILE, K_LINK, K_HARDLINK, K_OTHER };

struct entry {
	char *rel; /* path below the top ("" for the top itself) */
	enum kind kind;
	struct stat st;
	size_t link_to; /* K_HARDLINK: the entry it is a link to */
	bool kept;	/* K_FILE: already complete in dst */
};

struct copy {
	const char *src, *dst;
	struct entry **blocks; /* MAX_BLOCKS pointers, each to BLOCK_LEN entries or NULL */
	size_t n;	       /* entries made by the walk (the walk's thread only) */
	/* (dev, ino) -> entry index, for files with more than one link: open addressing. */
	struct {
		dev_t dev;
		ino_t ino;
		size_t idx;
		bool used;
	} * links;
	size_t links_cap, links_n;
	/* Shared with the workers. */
	atomic_size_t published; /* entries 0 .. published-1 are complete */
	atomic_bool walk_done;	 /* no more entries will be published */
	pthread_mutex_t pub_lock;
	pthread_cond_t pub_cond; /* broadcast as entries are published, and at the end */
	atomic_size_t next;
	atomic_uint_fast64_t bytes;
	atomic_int error;
	atomic_bool no_cfr; /* copy_file_range refused this pair of file systems: splice */
	bool fresh;	    /* dst did not exist: nothing to resume, no need to look */
	bool plain_owner;   /* fresh, and new files get our uid and gid (no setgid dst) */
	uid_t uid;
	gid_t gid;
	char why[256];
	pthread_mutex_t why_lock;
	int running; /* workers still copying, under done_lock */
	pthread_mutex_t done_lock;
	pthread_cond_t done;
};

static void fail_once(struct copy *c, int err, const char *path)
{
	int expected = 0;
	if (atomic_compare_exchange_strong(&c->error, &expected, err)) {
		pthread_mutex_lock(&c->why_lock);
		snprintf(c->why, sizeof(c->why), "copying %s: %s", path, strerror(-err));
		pthread_mutex_unlock(&c->why_lock);
	}
}

static struct entry *ent(const struct copy *c, size_t i)
{
	return &c->blocks[i >> BLOCK_SHIFT][i & (BLOCK_LEN - 1)];
}

static void publish_end(struct copy *c)
{
	pthread_mutex_lock(&c->pub_lock);
	atomic_store(&c->walk_done, true);
	pthread_cond_broadcast(&c->pub_cond);
	pthread_mutex_unlock(&c->pub_lock);
}

/* Adds a complete entry and publishes it to the copiers (waking them every 64 entries). */
static int push(struct copy *c, const char *rel, enum kind k, const struct stat *st, size_t link_to,
		bool kept)
{
	size_t b = c->n >> BLOCK_SHIFT;
	if (b >= MAX_BLOCKS)
		return -E2BIG;
	if (!c->blocks[b] && !(c->blocks[b] = calloc(BLOCK_LEN, sizeof(struct entry))))
		return -ENOMEM;
	struct entry *e = ent(c, c->n);
	memset(e, 0, sizeof(*e));
	if (!(e->rel = strdup(rel)))
		return -ENOMEM;
	e->kind = k;
	e->st = *st;
	e->link_to = link_to;
	e->kept = kept;
	c->n++;
	atomic_store_explicit(&c->published, c->n, memory_order_release);
	if ((c->n & 63) == 0) {
		pthread_mutex_lock(&c->pub_lock);
		pthread_cond_broadcast(&c->pub_cond);
		pthread_mutex_unlock(&c->pub_lock);
	}
	return 0;
}

/* Finds or records the first entry with this inode; returns its index or SIZE_MAX if new. */
static int link_lookup(struct copy *c, const struct stat *st, size_t idx, size_t *found)
{
	if (c->links_n * 2 >= c->links_cap) {
		size_t cap = c->links_cap ? c->links_cap * 2 : 1024;
		__typeof__(c->links) t = calloc(cap, sizeof(*t));
		if (!t)
			return -ENOMEM;
		for (size_t i = 0; i < c->links_cap; i++)
			if (c->links[i].used) {
				size_t h = (size_t)(c->links[i].ino ^ c->links[i].dev) & (cap - 1);
				while (t[h].used)
					h = (h + 1) & (cap - 1);
				t[h] = c->links[i];
			}
		free(c->links);
		c->links = t;
		c->links_cap = cap;
	}
	size_t h = (size_t)(st->st_ino ^ st->st_dev) & (c->links_cap - 1);
	while (c->links[h].used) {
		if (c->links[h].ino == st->st_ino && c->links[h].dev == st->st_dev) {
			*found = c->links[h].idx;
			return 0;
		}
		h = (h + 1) & (c->links_cap - 1);
	}
	c->links[h].used = true;
	c->links[h].dev = st->st_dev;
	c->links[h].ino = st->st_ino;
	c->links[h].idx = idx;
	c->links_n++;
	*found = SIZE_MAX;
	return 0;
}

static void join(char *out, size_t len, const char *top, const char *rel)
{
	snprintf(out, len, "%s%s%s", top, *rel ? "/" : "", rel);
}

static int copy_xattrs_fd(int in, int out)
{
	char names[4096], value[65536];
	ssize_t n = flistxattr(in, names, sizeof(names));
	if (n <= 0)
		return n < 0 && errno != ENOTSUP ? -errno : 0;
	for (char *p = names; p < names + n; p += strlen(p) + 1) {
		ssize_t v = fgetxattr(in, p, value, sizeof(value));
		if (v < 0)
			continue;
		if (fsetxattr(out, p, value, (size_t)v, 0) < 0 && errno != ENOTSUP)
			return -errno;
	}
	return 0;
}

static int copy_xattrs_path(const char *in, const char *out)
{
	char names[4096], value[65536];
	ssize_t n = llistxattr(in, names, sizeof(names));
	if (n <= 0)
		return n < 0 && errno != ENOTSUP ? -errno : 0;
	for (char *p = names; p < names + n; p += strlen(p) + 1) {
		ssize_t v = lgetxattr(in, p, value, sizeof(value));
		if (v < 0)
			continue;
		/* Symlinks take only trusted./security. attributes; skip what the FS refuses. */
		if (lsetxattr(out, p, value, (size_t)v, 0) < 0 && errno != ENOTSUP &&
		    errno != EPERM)
			return -errno;
	}
	return 0;
}

static bool same_time(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

/* Copies one regular file's data and metadata; the mtime is set last (the resume check). */
static int copy_file(struct copy *c, const struct entry *e, const char *from, const char *to)
{
	_cleanup_close_ int in = open(from, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (in < 0)
		return -errno;
	/* A fresh inode: never write through a hard link an earlier, interrupted run made. */
	if (!c->fresh && unlink(to) < 0 && errno != ENOENT)
		return -errno;
	/*
	 * A file that would be ours anyway (the common case: root:root, made by root in a fresh
	 * copy) is created with its mode (the umask is 0 during the copy) and needs no fchown or
	 * fchmod.
	 */
	bool direct = c->plain_owner && e->st.st_uid == c->uid && e->st.st_gid == c->gid &&
		      (e->st.st_mode & 07000) == 0;
	_cleanup_close_ int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
				       direct ? e->st.st_mode & 0777 : 0600);
	if (out < 0)
		return -errno;
	/*
	 * A file with fewer blocks than bytes has holes: copy its data segments only
	 * (SEEK_DATA/SEEK_HOLE) and let the size make the rest, so it stays sparse. Others are one
	 * segment, with no extra system calls.
	 */
	off_t size = e->st.st_size, pos = 0;
	bool sparse = (off_t)e->st.st_blocks * 512 < size;
	bool use_cfr = !atomic_load(&c->no_cfr);
	while (pos < size) {
		off_t end = size;
		if (sparse) {
			off_t data = lseek(in, pos, SEEK_DATA);
			if (data < 0 && errno == ENXIO)
				break; /* a hole to the end */
			if (data < 0)
				return -errno;
			off_t hole = lseek(in, data, SEEK_HOLE);
			if (hole < 0)
				return -errno;
			pos = data;
			end = hole < size ? hole : size;
			if (lseek(out, pos, SEEK_SET) < 0)
				return -errno;
		}
		while (pos < end) {
			size_t chunk = end - pos > COPY_CHUNK ? COPY_CHUNK : (size_t)(end - pos);
			ssize_t n;
			if (use_cfr) {
				off_t ip = pos, op = pos;
				n = copy_file_range(in, &ip, out, &op, chunk, 0);
				if (n < 0 && (errno == EXDEV || errno == EINVAL ||
					      errno == ENOSYS || errno == EOPNOTSUPP)) {
					/* Another file system (the kernel refuses since 5.19):
					 * splice. */
					use_cfr = false;
					atomic_store(&c->no_cfr, true);
					if (lseek(out, pos, SEEK_SET) < 0)
						return -errno;
					continue;
				}
			} else {
				off_t ip = pos;
				n = sendfile(out, in, &ip, chunk);
			}
			if (n < 0) {
				if (errno == EINTR)
					continue;
				return -errno;
			}
			if (n == 0)
				return -EIO; /* the source shrank: it is read-only, so it must not
					      */
			pos += n;
			atomic_fetch_add(&c->bytes, (uint64_t)n);
			if (atomic_load(&c->error))
				return 0;
		}
	}
	/*
	 * The size of a sparse file comes from ftruncate, not from its data, so it could reach the
	 * disk before the data does: sync it, or a resume after a power cut would keep it half
	 * made.
	 */
	if (sparse && (ftruncate(out, size) < 0 || fdatasync(out) < 0))
		return -errno;
	if (!direct &&
	    (fchown(out, e->st.st_uid, e->st.st_gid) < 0 || fchmod(out, e->st.st_mode & 07777) < 0))
		return -errno;
	int r = copy_xattrs_fd(in, out);
	if (r < 0)
		return r;
	struct timespec ts[2] = {e->st.st_atim, e->st.st_mtim};
	return futimens(out, ts) < 0 ? -errno : 0;
}

static void *worker(void *arg)
{
	struct copy *c = arg;
	char from[PATH_MAX], to[PATH_MAX];
	for (;;) {
		size_t i = atomic_fetch_add(&c->next, 1);
		/* Wait for the walk to publish entry i, or to end without it. */
		while (i >= atomic_load_explicit(&c->published, memory_order_acquire) &&
		       !atomic_load(&c->walk_done) && !atomic_load(&c->error)) {
			pthread_mutex_lock(&c->pub_lock);
			if (i >= atomic_load(&c->published) && !atomic_load(&c->walk_done))
				pthread_cond_wait(&c->pub_cond, &c->pub_lock);
			pthread_mutex_unlock(&c->pub_lock);
		}
		if (i >= atomic_load_explicit(&c->published, memory_order_acquire) ||
		    atomic_load(&c->error))
			break;
		struct entry *e = ent(c, i);
		if (e->kind != K_FILE || e->kept)
			continue;
		join(from, sizeof(from), c->src, e->rel);
		join(to, sizeof(to), c->dst, e->rel);
		int r = copy_file(c, e, from, to);
		if (r < 0)
			fail_once(c, r, to);
	}
	pthread_mutex_lock(&c->done_lock);
	c->running--;
	pthread_cond_signal(&c->done);
	pthread_mutex_unlock(&c->done_lock);
	return NULL;
}

/* Pre-order walk of src/rel: directories and symlinks made at once, files queued. */
static int walk(struct copy *c, const char *rel, struct seed_stats *st)
{
	char from[PATH_MAX], to[PATH_MAX];
	int failed = atomic_load(&c->error);
	if (failed < 0)
		return failed; /* a copier failed: the copy is over */
	join(from, sizeof(from), c->src, rel);
	join(to, sizeof(to), c->dst, rel);
	struct stat s, d;
	if (lstat(from, &s) < 0)
		return -errno;
	bool have = !c->fresh && lstat(to, &d) == 0;
	int r;

	if (S_ISDIR(s.st_mode)) {
		if (have && !S_ISDIR(d.st_mode) && (r = remove_tree(to)) < 0)
			return r;
		if ((!have || !S_ISDIR(d.st_mode)) && mkdir(to, 0700) < 0 && errno != EEXIST)
			return -errno;
		if (!*rel) {
			/* The top of a fresh copy: without setgid (inherited from its parent), all
			 * it will hold is created with our uid and gid. */
			struct stat t;
			c->plain_owner = c->fresh && lstat(to, &t) == 0 && !(t.st_mode & S_ISGID);
		}
		if ((r = push(c, rel, K_DIR, &s, 0, false)) < 0)
			return r;
		st->dirs++;
		char **names;
		size_t n;
		if ((r = list_dir(from, &names, &n)) < 0) {
			free_names(names, n);
			return r;
		}
		/* Sorted: the copy order (and so the resume) does not depend on readdir order. */
		qsort(names, n, sizeof(*names), cmp_str);
		for (size_t i = 0; i < n && r >= 0; i++) {
			char child[PATH_MAX];
			if (snprintf(child, sizeof(child), "%s%s%s", rel, *rel ? "/" : "",
				     names[i]) >= (int)sizeof(child))
				r = -ENAMETOOLONG;
			else
				r = walk(c, child, st);
		}
		free_names(names, n);
		return r;
	}
	/*
	 * Any inode with more than one name is made once and linked: regular files, and also the
	 * symlinks Nix hard-links into .links (it builds with CAN_LINK_SYMLINK on Linux), device
	 * nodes and fifos.
	 */
	if (s.st_nlink > 1) {
		size_t first;
		if ((r = link_lookup(c, &s, c->n, &first)) < 0)
			return r;
		if (first != SIZE_MAX) {
			if ((r = push(c, rel, K_HARDLINK, &s, first, false)) < 0)
				return r;
			st->hardlinks++;
			return 0;
		}
	}
	if (S_ISREG(s.st_mode)) {
		bool kept = have && S_ISREG(d.st_mode) && d.st_size == s.st_size &&
			    same_time(&d.st_mtim, &s.st_mtim) &&
			    (d.st_mode & 07777) == (s.st_mode & 07777);
		if (have && !kept && !S_ISREG(d.st_mode) && (r = remove_tree(to)) < 0)
			return r;
		if ((r = push(c, rel, K_FILE, &s, 0, kept)) < 0)
			return r;
		if (kept)
			st->kept++;
		else
			st->total_bytes += (uint64_t)s.st_size;
		st->files++;
		return 0;
	}
	/* Symlinks, devices, fifos, sockets: made now, complete with their metadata. */
	if (have && (r = remove_tree(to)) < 0)
		return r;
	if (S_ISLNK(s.st_mode)) {
		char target[PATH_MAX];
		ssize_t n = readlink(from, target, sizeof(target) - 1);
		if (n < 0)
			return -errno;
		target[n] = '\0';
		if (symlink(target, to) < 0)
			return -errno;
		st->symlinks++;
	} else {
		if (mknod(to, s.st_mode, s.st_rdev) < 0)
			return -errno;
		st->others++;
	}
	if (lchown(to, s.st_uid, s.st_gid) < 0)
		return -errno;
	if (!S_ISLNK(s.st_mode) && chmod(to, s.st_mode & 07777) < 0)
		return -errno;
	if ((r = copy_xattrs_path(from, to)) < 0)
		return r;
	struct timespec ts[2] = {s.st_atim, s.st_mtim};
	if (utimensat(AT_FDCWD, to, ts, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return push(c, rel, S_ISLNK(s.st_mode) ? K_LINK : K_OTHER, &s, 0, false);
}

static void progress(struct copy *c, uint64_t t0, uint64_t total, bool *shown, bool last)
{
	uint64_t now = now_ms();
	if (now - t0 < 1000 && !*shown)
		return;
	char text[128];
	seed_progress_text(atomic_load(&c->bytes), total, now - t0, text, sizeof(text));
	/* The console only: progress lines would flood kmsg. */
	fprintf(stderr, "\rfactory-init: copying the factory store: %s%s", text, last ? "\n" : "");
	fflush(stderr);
	*shown = true;
}

int seed_copy_tree(const char *src, const char *dst, uint64_t room, struct seed_stats *st,
		   char *why, size_t why_len)
{
	struct copy c = {.src = src, .dst = dst};
	uint64_t t0 = now_ms();
	int r;
	/* Modes given at creation are the modes: restored on the way out. */
	mode_t mask = umask(0);
	memset(st, 0, sizeof(*st));
	atomic_init(&c.published, 0);
	atomic_init(&c.walk_done, false);
	atomic_init(&c.next, 0);
	atomic_init(&c.bytes, 0);
	atomic_init(&c.error, 0);
	atomic_init(&c.no_cfr, false);
	struct stat dst_st;
	c.fresh = lstat(dst, &dst_st) < 0 && errno == ENOENT;
	pthread_mutex_init(&c.why_lock, NULL);
	pthread_mutex_init(&c.done_lock, NULL);
	pthread_cond_init(&c.done, NULL);
	pthread_mutex_init(&c.pub_lock, NULL);
	pthread_cond_init(&c.pub_cond, NULL);
	if (!(c.blocks = calloc(MAX_BLOCKS, sizeof(*c.blocks)))) {
		r = -ENOMEM;
		snprintf(why, why_len, "copying %s: %s", src, strerror(ENOMEM));
		goto out;
	}

	/*
	 * The copiers start first and copy each file as soon as the walk has made its directory
	 * and published it: the walk's metadata reads overlap the copiers' data reads and writes.
	 */
	c.uid = geteuid();
	c.gid = getegid();
	pthread_t th[COPY_THREADS];
	int started = 0;
	pthread_mutex_lock(&c.done_lock);
	for (; started < COPY_THREADS; started++) {
		c.running++;
		if (pthread_create(&th[started], NULL, worker, &c) != 0) {
			c.running--;
			break;
		}
	}
	pthread_mutex_unlock(&c.done_lock);
	r = walk(&c, "", st);
	char failed[160] = "";
	if (r < 0)
		snprintf(failed, sizeof(failed), "%s", strerror(-r));
	else if (room && st->total_bytes > room) {
		/* Known once the walk is done: the copy cannot fit, do not fill the disk first. */
		r = -ENOSPC;
		snprintf(failed, sizeof(failed), "%llu MB to copy, and room for at most %llu MB",
			 (unsigned long long)(st->total_bytes / 1000000),
			 (unsigned long long)(room / 1000000));
	}
	int expected = 0;
	if (r < 0 && atomic_compare_exchange_strong(&c.error, &expected, r))
		snprintf(why, why_len, "copying %s to %s: %s", src, dst, failed);
	else
		r = 0; /* no failure, or a copier failed first: its reason is reported below */
	publish_end(&c);
	if (started == 0) {
		c.running = 1;
		worker(&c);
	}
	/*
	 * Report progress while the copiers run (the last one to finish wakes us). No periodic
	 * sync: Btrfs writes a file's size only with its data (ordered extents), so after a power
	 * cut a file whose size and mtime match is complete, and its own commits (every 30 s)
	 * bound what a resume redoes; the one syncfs before the marker is what the protocol needs.
	 */
	bool shown = false;
	pthread_mutex_lock(&c.done_lock);
	while (c.running > 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 250 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		if (pthread_cond_timedwait(&c.done, &c.done_lock, &ts) == ETIMEDOUT && r >= 0) {
			pthread_mutex_unlock(&c.done_lock);
			progress(&c, t0, st->total_bytes, &shown, false);
			pthread_mutex_lock(&c.done_lock);
		}
	}
	pthread_mutex_unlock(&c.done_lock);
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	if (r < 0)
		goto out;
	if (shown)
		progress(&c, t0, st->total_bytes, &shown, true);
	if ((r = atomic_load(&c.error)) < 0) {
		snprintf(why, why_len, "%s", c.why);
		goto out;
	}
	/* Hard links, then directory metadata deepest first (adding entries changes mtimes). */
	char from[PATH_MAX], to[PATH_MAX];
	for (size_t i = 0; i < c.n; i++) {
		struct entry *e = ent(&c, i);
		if (e->kind != K_HARDLINK)
			continue;
		join(to, sizeof(to), dst, e->rel);
		join(from, sizeof(from), dst, ent(&c, e->link_to)->rel);
		struct stat a, b;
		bool exists = !c.fresh && lstat(to, &a) == 0; /* fresh: nothing is there */
		if (exists && lstat(from, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev)
			continue;
		if (exists && remove_tree(to) < 0) {
			r = -errno;
			snprintf(why, why_len, "replacing %s: %s", to, strerror(errno));
			goto out;
		}
		if (link(from, to) < 0) {
			r = -errno;
			snprintf(why, why_len, "linking %s: %s", to, strerror(errno));
			goto out;
		}
	}
	for (size_t i = c.n; i-- > 0;) {
		struct entry *e = ent(&c, i);
		if (e->kind != K_DIR)
			continue;
		join(from, sizeof(from), src, e->rel);
		join(to, sizeof(to), dst, e->rel);
		struct timespec ts[2] = {e->st.st_atim, e->st.st_mtim};
		if (chown(to, e->st.st_uid, e->st.st_gid) < 0 ||
		    chmod(to, e->st.st_mode & 07777) < 0 || (r = copy_xattrs_path(from, to)) < 0 ||
		    utimensat(AT_FDCWD, to, ts, 0) < 0) {
			r = r < 0 ? r : -errno;
			snprintf(why, why_len, "setting the metadata of %s: %s", to, strerror(-r));
			goto out;
		}
	}
	r = 0;
out:
	st->bytes = atomic_load(&c.bytes);
	st->ms = now_ms() - t0;
	for (size_t i = 0; i < c.n; i++)
		free(ent(&c, i)->rel);
	for (size_t b = 0; c.blocks && b < MAX_BLOCKS && c.blocks[b]; b++)
		free(c.blocks[b]);
	free(c.blocks);
	free(c.links);
	pthread_mutex_destroy(&c.why_lock);
	pthread_mutex_destroy(&c.done_lock);
	pthread_cond_destroy(&c.done);
	pthread_mutex_destroy(&c.pub_lock);
	pthread_cond_destroy(&c.pub_cond);
	umask(mask);
	return r;
}

/* ---- bind mode ---------------------------------------------------------------------------- */

/* A marker (rel beneath persist), read without following links and believed only when it holds a
 * valid identity (persist.c). */
static int read_marker(const char *persist, const char *rel, char *out, size_t out_len)
{
	_cleanup_close_ int fd = open(persist, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	return persist_read_marker(fd, rel, out, out_len);
}

static int write_marker(const char *path, const char *identity)
{
	char text[512];
	int n = snprintf(text, sizeof(text), "%s\n", identity);
	return write_file_atomic(path, text, (size_t)n, 0644);
}

/* Copies the store paths of the new image that the copy lacks (names starting with '.' are
 * Nix's own bookkeeping, like .links, and stay as they are). */
static int refresh_bind(const char *factory_nix, const char *nix, struct seed_stats *st, char *why,
			size_t why_len)
{
	char fstore[PATH_MAX], pstore[PATH_MAX], from[PATH_MAX], tmp[PATH_MAX], final[PATH_MAX];
	char **fnames = NULL, **pnames = NULL;
	size_t fn = 0, pn = 0;
	int r;
	snprintf(fstore, sizeof(fstore), "%s/store", factory_nix);
	snprintf(pstore, sizeof(pstore), "%s/store", nix);
	if ((r = list_dir(fstore, &fnames, &fn)) < 0 || (r = list_dir(pstore, &pnames, &pn)) < 0) {
		snprintf(why, why_len, "listing the stores: %s", strerror(-r));
		goto out;
	}
	qsort(pnames, pn, sizeof(*pnames), cmp_str);
	/* Leftovers of an interrupted refresh. */
	for (size_t i = 0; i < pn; i++)
		if (str_has_prefix(pnames[i], ".fi-new-")) {
			snprintf(tmp, sizeof(tmp), "%s/%s", pstore, pnames[i]);
			remove_tree(tmp);
		}
	memset(st, 0, sizeof(*st));
	uint64_t t0 = now_ms();
	size_t added = 0;
	for (size_t pass = 0; pass < 2; pass++) {
		/* Pass 0 copies under temporary names; after a sync, pass 1 renames them. */
		for (size_t i = 0; i < fn; i++) {
			const char *name = fnames[i];
			if (name[0] == '.' || bsearch(&name, pnames, pn, sizeof(*pnames), cmp_str))
				continue;
			snprintf(tmp, sizeof(tmp), "%s/.fi-new-%s", pstore, name);
			if (pass == 1) {
				snprintf(final, sizeof(final), "%s/%s", pstore, name);
				if (rename(tmp, final) < 0) {
					r = -errno;
					snprintf(why, why_len, "renaming %s: %s", final,
						 strerror(errno));
					goto out;
				}
				added++;
				continue;
			}
			struct seed_stats one;
			snprintf(from, sizeof(from), "%s/%s", fstore, name);
			if ((r = seed_copy_tree(from, tmp, 0, &one, why, why_len)) < 0) {
				remove_tree(tmp);
				goto out;
			}
			st->files += one.files;
			st->dirs += one.dirs;
			st->symlinks += one.symlinks;
			st->hardlinks += one.hardlinks;
			st->bytes += one.bytes;
		}
		if ((r = sync_path(pstore)) < 0) {
			snprintf(why, why_len, "syncing %s: %s", pstore, strerror(-r));
			goto out;
		}
	}
	st->ms = now_ms() - t0;
	log_info("factory refresh: added %zu store paths (%llu files, %llu MB) in %llu ms", added,
		 (unsigned long long)st->files, (unsigned long long)(st->bytes / 1000000),
		 (unsigned long long)st->ms);
	r = (int)(added > INT_MAX ? INT_MAX : added);
out:
	free_names(fnames, fn);
	free_names(pnames, pn);
	return r;
}

/*
 * Btrfs with compress=zstd (level 3) stores a Nix store in about a third to a half of its bytes;
 * a copy with more than this many times the free space in bytes cannot fit.
 */
#define STORE_RATIO_BOUND 4

/* The record of a bind copy that ran out of space: "IDENTITY FREE-BYTES" in <persist>. */
#define TOO_SMALL_FILE ".factory-init-bind-too-small"

static uint64_t free_bytes(const char *dir)
{
	struct statvfs v;
	return statvfs(dir, &v) == 0 ? (uint64_t)v.f_bavail * v.f_frsize : 0;
}

static bool too_small_before(const char *persist, const char *identity, uint64_t *free_then)
{
	_cleanup_close_ int fd = open(persist, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	_cleanup_free_ char *text = NULL;
	if (fd < 0 || beneath_read(fd, TOO_SMALL_FILE, 256, &text, NULL) < 0)
		return false;
	char id[128];
	unsigned long long f;
	if (sscanf(text, "%127s %llu", id, &f) != 2 || !persist_identity_valid(id) ||
	    strcmp(id, identity) != 0)
		return false;
	*free_then = f;
	return true;
}

static void record_too_small(const char *persist, const char *identity, uint64_t free_now)
{
	char path[PATH_MAX], text[192];
	snprintf(path, sizeof(path), "%s/" TOO_SMALL_FILE, persist);
	int n = snprintf(text, sizeof(text), "%s %llu\n", identity, (unsigned long long)free_now);
	write_file_atomic(path, text, (size_t)n, 0644);
}

static void forget_too_small(const char *persist)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/" TOO_SMALL_FILE, persist);
	unlink(path);
}

int seed_bind_store(const char *factory_nix, const char *persist, const char *identity,
		    struct seed_stats *st, bool *copied, bool *refreshed, char *previous,
		    size_t previous_len, char *why, size_t why_len)
{
	char nix[PATH_MAX], staging[PATH_MAX], marker[PATH_MAX], smarker[PATH_MAX];
	char old[512] = "";
	int r;
	*copied = *refreshed = false;
	memset(st, 0, sizeof(*st));
	snprintf(nix, sizeof(nix), "%s/nix", persist);
	snprintf(staging, sizeof(staging), "%s/" SEED_STAGING, persist);
	snprintf(marker, sizeof(marker), "%s/" SEED_MARKER, nix);
	snprintf(smarker, sizeof(smarker), "%s/" SEED_MARKER, staging);

	if (read_marker(persist, "nix/" SEED_MARKER, old, sizeof(old)) == 0) {
		snprintf(previous, previous_len, "%s", old);
		if (strcmp(old, identity) == 0)
			return 0; /* the common case: O(1) */
		*refreshed = true;
		r = refresh_bind(factory_nix, nix, st, why, why_len);
		if (r < 0)
			return r;
		*copied = r > 0;
		r = write_marker(marker, identity);
		if (r < 0)
			snprintf(why, why_len, "recording the image identity: %s", strerror(-r));
		return r;
	}

	/* No complete copy yet: copy or resume into staging, unless staging is already whole. */
	if (read_marker(persist, SEED_STAGING "/" SEED_MARKER, old, sizeof(old)) < 0) {
		uint64_t free_now = free_bytes(persist), free_then = 0;
		if (too_small_before(persist, identity, &free_then) && free_now <= free_then) {
			*copied = true; /* the attempt counts as the copy step, with no bytes */
			snprintf(
			    why, why_len,
			    "/persist is too small for a copy of the factory store: an earlier "
			    "boot ran out of space with %llu MB free, and %llu MB are free "
			    "now; not copying again until more is free",
			    (unsigned long long)(free_then / 1000000),
			    (unsigned long long)(free_now / 1000000));
			return -ENOSPC;
		}
		struct stat s;
		if (lstat(staging, &s) == 0)
			log_info("resuming the interrupted copy of the factory store");
		/* Compressed, the copy takes less room than its bytes: refuse at the end of the
		 * walk only a copy that could not fit even at STORE_RATIO_BOUND:1. */
		uint64_t room = free_now > UINT64_MAX / STORE_RATIO_BOUND
				    ? UINT64_MAX
				    : free_now * STORE_RATIO_BOUND; /* 0 (not known): no limit */
		r = seed_copy_tree(factory_nix, staging, room, st, why, why_len);
		*copied = true;
		if (r < 0) {
			if (r == -ENOSPC) {
				/* Give the space back: the overlay (or the factory store) takes
				 * over. Remember how much was free, so the next boots do not try
				 * the same copy again. */
				remove_tree(staging);
				record_too_small(persist, identity, free_now);
				snprintf(
				    why, why_len,
				    "/persist is too small for a copy of the factory store (%llu "
				    "MB, %llu MB were free); removed the partial copy",
				    (unsigned long long)(st->total_bytes / 1000000),
				    (unsigned long long)(free_now / 1000000));
			}
			return r;
		}
		forget_too_small(persist);
		if ((r = sync_path(staging)) < 0 || (r = write_marker(smarker, identity)) < 0) {
			snprintf(why, why_len, "finishing the copy: %s", strerror(-r));
			return r;
		}
	}
	/* An overlay's upper layer (or anything else) already at <persist>/nix is kept aside. */
	struct stat s;
	if (lstat(nix, &s) == 0) {
		char aside[PATH_MAX];
		for (int i = 0; i < 100; i++) {
			snprintf(aside, sizeof(aside), "%s/nix.before-bind%s%.0d", persist,
				 i ? "." : "", i);
			if (lstat(aside, &s) < 0)
				break;
		}
		if (rename(nix, aside) < 0) {
			r = -errno;
			snprintf(why, why_len, "moving %s aside: %s", nix, strerror(errno));
			return r;
		}
		log_warn("moved the previous %s to %s", nix, aside);
	}
	if (rename(staging, nix) < 0) {
		r = -errno;
		snprintf(why, why_len, "renaming the copy to %s: %s", nix, strerror(errno));
		return r;
	}
	if ((r = fsync_dir(persist)) < 0) {
		snprintf(why, why_len, "syncing %s: %s", persist, strerror(-r));
		return r;
	}
	return 0;
}

/* ---- overlay mode ------------------------------------------------------------------------- */

int seed_overlay_refresh(const char *factory_nix, const char *persist, const char *identity,
			 bool *refreshed, char *previous, size_t previous_len)
{
	char idfile[PATH_MAX], fstore[PATH_MAX], ustore[PATH_MAX], path[PATH_MAX];
	char old[512] = "";
	*refreshed = false;
	snprintf(idfile, sizeof(idfile), "%s/nix/" SEED_OVERLAY_MARKER, persist);
	snprintf(fstore, sizeof(fstore), "%s/store", factory_nix);
	snprintf(ustore, sizeof(ustore), "%s/nix/upper/store", persist);
	bool known = read_marker(persist, "nix/" SEED_OVERLAY_MARKER, old, sizeof(old)) == 0;
	snprintf(previous, previous_len, "%s", old);
	if (known && strcmp(old, identity) == 0)
		return 0;
	*refreshed = known;
	int fixed = 0;
	/* A whiteout (0:0 character device) of a store path the new lower store has hides it. */
	char **names;
	size_t n;
	if (list_dir(fstore, &names, &n) == 0) {
		for (size_t i = 0; i < n; i++) {
			struct stat s;
			snprintf(path, sizeof(path), "%s/%s", ustore, names[i]);
			if (lstat(path, &s) == 0 && S_ISCHR(s.st_mode) &&
			    s.st_rdev == makedev(0, 0) && unlink(path) == 0)
				fixed++;
		}
	}
	free_names(names, n);
	/* An opaque upper store directory hides the whole lower store. */
	char v[8];
	if (getxattr(ustore, "trusted.overlay.opaque", v, sizeof(v)) > 0 &&
	    removexattr(ustore, "trusted.overlay.opaque") == 0)
		fixed++;
	if (fixed)
		log_info("factory refresh: removed %d upper-layer entries hiding new store paths",
			 fixed);
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/nix", persist);
	make_dirs(dir, 0755);
	int r = write_marker(idfile, identity);
	return r < 0 ? r : fixed;
}
