"""The C declarations of everything ``nvc.sys`` calls: the one source for both ways of building the FFI.

* ``nvc/sys/_ffi_build.py`` turns them into ``nvc/sys/_nvc_cffi.py`` (cffi's out-of-line ABI mode: the
  declarations pre-parsed into tables, loaded in well under a millisecond with no pycparser);
* :func:`nvc.sys._ffi.libc` falls back to ``cffi.FFI().cdef(CDEF)`` when that module is missing or unusable.

This module must stay import-cheap and free of cffi: it is only a string. After editing it, regenerate with
``python -m nvc.sys._ffi_build`` (``tests/test_sys_ffi.py`` fails while the generated module is stale).
"""

CDEF = """
/* --- libc: mount(2), umount2(2), setns(2), unshare(2), prctl(2), madvise(2) and the raw system call ------------- */
int mount(const char *source, const char *target, const char *filesystemtype, unsigned long mountflags,
          const void *data);
int umount2(const char *target, int flags);
int setns(int fd, int nstype);
int unshare(int flags);
int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
int madvise(void *addr, size_t length, int advice);
long syscall(long number, ...);

/* --- mount_setattr(2) and openat2(2) (nvc.sys.mount, nvc.sys.openat2) ------------------------------------------- */
struct mount_attr {
    uint64_t attr_set;
    uint64_t attr_clr;
    uint64_t propagation;
    uint64_t userns_fd;
};

struct open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

/* --- bpf(2) attributes (nvc.sys.bpf): the prefixes of union bpf_attr's members we use ---------------------------- */
struct nvc_bpf_prog_load_attr {     /* BPF_PROG_LOAD */
    uint32_t prog_type;
    uint32_t insn_cnt;
    uint64_t insns;
    uint64_t license;
    uint32_t log_level;
    uint32_t log_size;
    uint64_t log_buf;
    uint32_t kern_version;
    uint32_t prog_flags;
    char     prog_name[16];
    uint32_t prog_ifindex;
    uint32_t expected_attach_type;
};

struct nvc_bpf_attach_attr {        /* BPF_PROG_ATTACH / BPF_PROG_DETACH */
    uint32_t target_fd;
    uint32_t attach_bpf_fd;
    uint32_t attach_type;
    uint32_t attach_flags;
    uint32_t replace_bpf_fd;
};

struct nvc_bpf_query_attr {         /* BPF_PROG_QUERY; the kernel may write up to 'revision' */
    uint32_t target_fd;
    uint32_t attach_type;
    uint32_t query_flags;
    uint32_t attach_flags;
    uint64_t prog_ids;
    uint32_t prog_cnt;
    uint32_t pad;
    uint64_t prog_attach_flags;
    uint64_t link_ids;
    uint64_t link_attach_flags;
    uint64_t revision;
};

struct nvc_bpf_get_id_attr {        /* BPF_PROG_GET_FD_BY_ID */
    uint32_t id;
    uint32_t next_id;
    uint32_t open_flags;
};

struct nvc_bpf_info_attr {          /* BPF_OBJ_GET_INFO_BY_FD */
    uint32_t bpf_fd;
    uint32_t info_len;
    uint64_t info;
};

struct nvc_bpf_prog_info {          /* the prefix of struct bpf_prog_info we read */
    uint32_t type;
    uint32_t id;
    uint8_t  tag[8];
    uint32_t jited_prog_len;
    uint32_t xlated_prog_len;
    uint64_t jited_prog_insns;
    uint64_t xlated_prog_insns;
    uint64_t load_time;
    uint32_t created_by_uid;
    uint32_t nr_map_ids;
    uint64_t map_ids;
    char     name[16];
};
"""
