#include "TcpCongestion.h"

#include "llmir/support/Strings.h"

#include <cstdint>
#include <cstring>
#include <elf.h>
#include <link.h>
#include <mutex>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace llmir::kvstore {
namespace {

#if defined(__x86_64__)
constexpr unsigned kJumpSlot = R_X86_64_JUMP_SLOT, kGlobalData = R_X86_64_GLOB_DAT;
#elif defined(__aarch64__)
constexpr unsigned kJumpSlot = R_AARCH64_JUMP_SLOT, kGlobalData = R_AARCH64_GLOB_DAT;
#else
constexpr unsigned kJumpSlot = ~0u, kGlobalData = ~0u; // not redirected: the host's default
#endif

std::mutex mu;
std::vector<std::string> algorithms; // guarded by mu

int socketWithCongestion(int domain, int type, int protocol) {
  int fd = ::socket(domain, type, protocol);
  if (fd < 0 || (domain != AF_INET && domain != AF_INET6) || (type & 0xf) != SOCK_STREAM)
    return fd;
  std::vector<std::string> names;
  {
    std::lock_guard lock(mu);
    names = algorithms;
  }
  for (const std::string &name : names)
    if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name.data(), socklen_t(name.size())) == 0)
      break;
  return fd;
}

// The dynamic section's addresses: glibc relocates them in place for loaded
// objects, other loaders may not.
uintptr_t absolute(const dl_phdr_info *info, ElfW(Addr) address) {
  return address < info->dlpi_addr ? info->dlpi_addr + address : address;
}

// Points the GOT entry at `slot` to socketWithCongestion. Not the entry's
// old value is called but socket(2) itself: with lazy binding the entry
// may still hold the PLT's resolver stub, which would write the real
// address back over ours.
void redirect(uintptr_t relroStart, uintptr_t relroEnd, uintptr_t slot, int &redirected) {
  void *target = reinterpret_cast<void *>(&socketWithCongestion);
  if (*reinterpret_cast<void **>(slot) == target) {
    ++redirected;
    return;
  }
  const long page = sysconf(_SC_PAGESIZE);
  auto *start = reinterpret_cast<void *>(slot & ~uintptr_t(page - 1));
  bool relro = slot >= relroStart && slot < relroEnd; // read-only once relocated
  if (relro && mprotect(start, size_t(page), PROT_READ | PROT_WRITE) != 0)
    return;
  __atomic_store_n(reinterpret_cast<void **>(slot), target, __ATOMIC_RELEASE);
  if (relro)
    mprotect(start, size_t(page), PROT_READ);
  ++redirected;
}

int redirectSocketCalls(dl_phdr_info *info, size_t, void *data) {
  int &redirected = *static_cast<int *>(data);
  const char *path = info->dlpi_name ? info->dlpi_name : "";
  const char *base = std::strrchr(path, '/');
  base = base ? base + 1 : path;
  if (std::strncmp(base, "libuc", 5) != 0)
    return 0;
  const ElfW(Dyn) *dynamic = nullptr;
  uintptr_t relroStart = 0, relroEnd = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr) &ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_DYNAMIC)
      dynamic = reinterpret_cast<const ElfW(Dyn) *>(info->dlpi_addr + ph.p_vaddr);
    if (ph.p_type == PT_GNU_RELRO) {
      relroStart = info->dlpi_addr + ph.p_vaddr;
      relroEnd = relroStart + ph.p_memsz;
    }
  }
  if (!dynamic)
    return 0;
  const ElfW(Sym) *symbols = nullptr;
  const char *names = nullptr;
  const ElfW(Rela) *tables[2] = {nullptr, nullptr};
  size_t sizes[2] = {0, 0};
  for (const ElfW(Dyn) *d = dynamic; d->d_tag != DT_NULL; ++d) {
    switch (d->d_tag) {
    case DT_SYMTAB: symbols = reinterpret_cast<const ElfW(Sym) *>(absolute(info, d->d_un.d_ptr)); break;
    case DT_STRTAB: names = reinterpret_cast<const char *>(absolute(info, d->d_un.d_ptr)); break;
    case DT_JMPREL: tables[0] = reinterpret_cast<const ElfW(Rela) *>(absolute(info, d->d_un.d_ptr)); break;
    case DT_PLTRELSZ: sizes[0] = d->d_un.d_val; break;
    case DT_RELA: tables[1] = reinterpret_cast<const ElfW(Rela) *>(absolute(info, d->d_un.d_ptr)); break;
    case DT_RELASZ: sizes[1] = d->d_un.d_val; break;
    default: break;
    }
  }
  if (!symbols || !names)
    return 0;
  for (int t = 0; t < 2; ++t) {
    if (!tables[t])
      continue;
    for (size_t i = 0; i < sizes[t] / sizeof(ElfW(Rela)); ++i) {
      const ElfW(Rela) &r = tables[t][i];
      auto type = ELF64_R_TYPE(r.r_info);
      if (type != kJumpSlot && type != kGlobalData)
        continue;
      const ElfW(Sym) &symbol = symbols[ELF64_R_SYM(r.r_info)];
      if (std::strcmp(names + symbol.st_name, "socket") == 0)
        redirect(relroStart, relroEnd, info->dlpi_addr + r.r_offset, redirected);
    }
  }
  return 0;
}

} // namespace

int useTcpCongestionForUcx(const std::string &list) {
  std::vector<std::string> parsed = splitNonEmpty(list);
  if (parsed.empty())
    return 0;
  std::lock_guard lock(mu);
  algorithms = std::move(parsed);
  int redirected = 0;
  dl_iterate_phdr(&redirectSocketCalls, &redirected);
  return redirected;
}

std::string tcpCongestionOf(int fd) {
  char name[32] = {};
  socklen_t length = sizeof name;
  if (getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, &length) != 0)
    return "";
  return std::string(name, strnlen(name, length));
}

} // namespace llmir::kvstore
