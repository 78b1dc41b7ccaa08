/* SPDX-License-Identifier: MIT */
/*
 * Seeding /persist/nix from the factory store (vm.store=bind) and noticing a new factory image.
 *
 * The copy is crash-safe: it goes to <persist>/.nix-staging, is synced, gets its completion marker
 * (.factory-init-store) and only then is renamed to <persist>/nix, so a store is bound only when it
 * is whole. An interrupted copy is resumed (entries already there with the right type, size and
 * mtime are kept). A new factory image adds only the store paths the copy lacks, each copied under
 * a temporary name and renamed into place.
 */
#ifndef FACTORY_INIT_SEED_H
#define FACTORY_INIT_SEED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SEED_MARKER ".factory-init-store"    /* in the copy's top directory */
#define SEED_STAGING ".nix-staging"	     /* next to it, in <persist> */
#define SEED_OVERLAY_MARKER ".factory-image" /* overlay mode: in <persist>/nix */
#define FACTORY_ID_FILE "/etc/factory-image-id"

struct seed_stats {
	uint64_t files, dirs, symlinks, hardlinks, others, kept; /* kept: resumed, not copied */
	uint64_t bytes, total_bytes;
	uint64_t ms;
};

/* ---- pure helpers ------------------------------------------------------------------------- */

/* "42% (120 MB of 290 MB, 85 MB/s, ETA 2 s)" */
void seed_progress_text(uint64_t done, uint64_t total, uint64_t elapsed_ms, char *out,
			size_t out_len);

/*
 * The identity of a factory image when it carries no FACTORY_ID_FILE: "store:" and the first 16
 * hex digits of SHA-256 over its sorted store path names (each followed by a NUL). names need
 * not be sorted; they are sorted in place.
 */
void seed_store_identity(char **names, size_t n, char *out, size_t out_len);

/* ---- the system side ---------------------------------------------------------------------- */

/* Reads the image identity under root: FACTORY_ID_FILE's first line, else seed_store_identity. */
int seed_factory_identity(const char *root, char *out, size_t out_len);

/*
 * Copies the tree src into dst (created if missing): regular files (copy_file_range, else
 * sendfile; sparse files stay sparse), directories, symlinks, hard links of every file type (as
 * links), devices and fifos, with owners, modes, timestamps and extended attributes; four threads
 * copy file data while the walk goes on. Entries already in dst with the same type, size and
 * mtime are kept (a resumed copy). Progress goes to the console once the copy has run for a
 * second. room (0: no limit): when the walk finds more bytes to copy than that, the copy stops
 * there with -ENOSPC. Returns 0 or a negative errno (-ENOSPC when the disk filled) with why.
 */
int seed_copy_tree(const char *src, const char *dst, uint64_t room, struct seed_stats *st,
		   char *why, size_t why_len);

/*
 * Makes <persist>/nix a complete copy of factory_nix (bind mode): nothing to do when the marker
 * is there and names the same image; copies (or resumes) into staging and renames it otherwise;
 * after a refresh (another image identity) copies the store paths the copy lacks. *copied says
 * whether anything was copied; *refreshed whether the image changed since the last boot.
 * A failed first copy (disk full, ...) removes the staging copy. Returns 0 or a negative errno
 * with why.
 */
int seed_bind_store(const char *factory_nix, const char *persist, const char *identity,
		    struct seed_stats *st, bool *copied, bool *refreshed, char *previous,
		    size_t previous_len, char *why, size_t why_len);

/*
 * Overlay mode: when the image identity differs from the one recorded in
 * <persist>/nix/.factory-image, removes what in the upper layer would hide the new image's store
 * paths (whiteouts of store paths the lower store has, an opaque flag on upper/store) and records
 * the new identity. Returns the number of entries fixed (>= 0) or a negative errno.
 */
int seed_overlay_refresh(const char *factory_nix, const char *persist, const char *identity,
			 bool *refreshed, char *previous, size_t previous_len);

#endif
