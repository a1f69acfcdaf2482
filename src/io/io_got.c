/*-------------------------------------------------------------------------
 *
 * io_got.c
 *		Redirect functions that the server executable imports: find the
 *		main program, read its JUMP_SLOT relocations, and swap GOT entries.
 *
 * The postgres executable is a PIE linked with BIND_NOW: every imported
 * function is called through its global offset table (GOT), filled by the
 * dynamic linker before main() and then made read-only (PT_GNU_RELRO).  In
 * the postmaster, before any child exists, we make that range writable,
 * replace the entries of the functions we wrap and protect it again; every
 * process forked afterwards inherits the patched table.  Only the
 * executable's own calls change: shared libraries (OpenSSL, libpq, other
 * extensions, this module) keep calling libc directly, which is how the
 * wrappers reach the real functions too (through the saved originals).
 *
 * This file knows nothing about files or encryption.  It runs at start-up
 * only, in the postmaster, single-threaded; it never ereports (the caller
 * turns a false return and its reason into a FATAL).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include "io/io_int.h"

typedef struct MainProgram
{
	bool		found;
	ElfW(Addr)	base;
	const ElfW(Phdr) *phdr;
	int			phnum;
} MainProgram;

/* dl_iterate_phdr lists the main program first (empty name). */
static int
find_main(struct dl_phdr_info *info, size_t size, void *arg)
{
	MainProgram *mp = (MainProgram *) arg;

	mp->found = true;
	mp->base = info->dlpi_addr;
	mp->phdr = info->dlpi_phdr;
	mp->phnum = info->dlpi_phnum;
	return 1;					/* stop after the first object */
}

/*
 * glibc relocates the pointers of the in-memory dynamic section on most
 * architectures and leaves them as link-time addresses on others: accept
 * both.
 */
static uintptr_t
dyn_ptr(const MainProgram *mp, ElfW(Addr) value)
{
	return value < mp->base ? (uintptr_t) (mp->base + value) : (uintptr_t) value;
}

typedef struct DynInfo
{
	const ElfW(Rela) *jmprel;
	size_t		jmprel_size;
	const ElfW(Rela) *rela;
	size_t		rela_size;
	const ElfW(Sym) *symtab;
	const char *strtab;
	uintptr_t	relro_start;
	uintptr_t	relro_end;
} DynInfo;

static bool
read_dynamic(const MainProgram *mp, DynInfo *di, char *why, size_t whysize)
{
	const ElfW(Dyn) *dyn = NULL;
	bool		rela_plt = true;

	memset(di, 0, sizeof(*di));
	for (int i = 0; i < mp->phnum; i++)
	{
		const ElfW(Phdr) *ph = &mp->phdr[i];

		if (ph->p_type == PT_DYNAMIC)
			dyn = (const ElfW(Dyn) *) (mp->base + ph->p_vaddr);
		else if (ph->p_type == PT_GNU_RELRO)
		{
			di->relro_start = mp->base + ph->p_vaddr;
			di->relro_end = di->relro_start + ph->p_memsz;
		}
	}
	if (dyn == NULL)
	{
		snprintf(why, whysize, "the server executable has no dynamic section");
		return false;
	}
	for (; dyn->d_tag != DT_NULL; dyn++)
	{
		switch (dyn->d_tag)
		{
			case DT_JMPREL:
				di->jmprel = (const ElfW(Rela) *) dyn_ptr(mp, dyn->d_un.d_ptr);
				break;
			case DT_PLTRELSZ:
				di->jmprel_size = dyn->d_un.d_val;
				break;
			case DT_PLTREL:
				rela_plt = dyn->d_un.d_val == DT_RELA;
				break;
			case DT_RELA:
				di->rela = (const ElfW(Rela) *) dyn_ptr(mp, dyn->d_un.d_ptr);
				break;
			case DT_RELASZ:
				di->rela_size = dyn->d_un.d_val;
				break;
			case DT_SYMTAB:
				di->symtab = (const ElfW(Sym) *) dyn_ptr(mp, dyn->d_un.d_ptr);
				break;
			case DT_STRTAB:
				di->strtab = (const char *) dyn_ptr(mp, dyn->d_un.d_ptr);
				break;
		}
	}
	if (!rela_plt || di->jmprel == NULL || di->symtab == NULL || di->strtab == NULL)
	{
		snprintf(why, whysize, "the server executable has no RELA procedure linkage table");
		return false;
	}
	return true;
}

static const char *
rela_name(const DynInfo *di, const ElfW(Rela) *r)
{
	size_t		symidx = ELF64_R_SYM(r->r_info);

	if (symidx == 0)
		return NULL;
	return di->strtab + di->symtab[symidx].st_name;
}

/*
 * For each name, find its JUMP_SLOT entry in the main program, and whether
 * some other relocation refers to it too (its address is taken, so calls
 * through that address would bypass a swapped slot).
 */
bool
cmk_got_scan(CmkGotSlot *slots, int nslots, char *why, size_t whysize)
{
	MainProgram mp = {0};
	DynInfo		di;

	dl_iterate_phdr(find_main, &mp);
	if (!mp.found)
	{
		snprintf(why, whysize, "the server executable was not found among the loaded objects");
		return false;
	}
	if (!read_dynamic(&mp, &di, why, whysize))
		return false;

	for (int i = 0; i < nslots; i++)
	{
		slots[i].slot = NULL;
		slots[i].other_reloc = false;
	}
	for (size_t k = 0; k < di.jmprel_size / sizeof(ElfW(Rela)); k++)
	{
		const ElfW(Rela) *r = &di.jmprel[k];
		const char *name = rela_name(&di, r);

		if (name == NULL)
			continue;
		for (int i = 0; i < nslots; i++)
		{
			if (strcmp(name, slots[i].name) != 0)
				continue;
			if (ELF64_R_TYPE(r->r_info) == R_X86_64_JUMP_SLOT)
				slots[i].slot = (void **) (mp.base + r->r_offset);
			else
				slots[i].other_reloc = true;
		}
	}
	for (size_t k = 0; di.rela && k < di.rela_size / sizeof(ElfW(Rela)); k++)
	{
		const char *name = rela_name(&di, &di.rela[k]);

		if (name == NULL)
			continue;
		for (int i = 0; i < nslots; i++)
			if (strcmp(name, slots[i].name) == 0)
				slots[i].other_reloc = true;
	}
	return true;
}

/* Make [start, end) writable or read-only again, whole pages. */
static bool
protect(uintptr_t start, uintptr_t end, int prot)
{
	uintptr_t	pagesize = (uintptr_t) sysconf(_SC_PAGESIZE);
	uintptr_t	lo = start & ~(pagesize - 1);
	uintptr_t	hi = (end + pagesize - 1) & ~(pagesize - 1);

	return mprotect((void *) lo, hi - lo, prot) == 0;
}

/*
 * Save every slot's current target in originals[], then point it at
 * replacements[].  All or nothing: the slots are checked first, and the
 * table is written only while it is writable.
 */
bool
cmk_got_swap(CmkGotSlot *slots, void *const *replacements, void **originals,
			 int nslots, char *why, size_t whysize)
{
	MainProgram mp = {0};
	DynInfo		di;
	bool		in_relro = false;

	dl_iterate_phdr(find_main, &mp);
	if (!mp.found || !read_dynamic(&mp, &di, why, whysize))
		return false;

	for (int i = 0; i < nslots; i++)
	{
		uintptr_t	s = (uintptr_t) slots[i].slot;

		if (slots[i].slot == NULL || *slots[i].slot == NULL)
		{
			snprintf(why, whysize, "no resolved GOT entry for %s", slots[i].name);
			return false;
		}
		if (s >= di.relro_start && s + sizeof(void *) <= di.relro_end)
			in_relro = true;
	}

	if (in_relro && !protect(di.relro_start, di.relro_end, PROT_READ | PROT_WRITE))
	{
		snprintf(why, whysize, "could not make the GOT writable: %m");
		return false;
	}
	for (int i = 0; i < nslots; i++)
	{
		originals[i] = *slots[i].slot;
		*slots[i].slot = replacements[i];
	}
	if (in_relro && !protect(di.relro_start, di.relro_end, PROT_READ))
	{
		snprintf(why, whysize, "could not make the GOT read-only again: %m");
		return false;
	}
	return true;
}
