// State file: JSON {tunnel_id, secret (hex), domain}, mode 0600 in a 0700 directory that
// belongs to the user; the temporary file is always created new (O_EXCL | O_NOFOLLOW).
#include "client/state_file.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace culvert::client {

namespace {

std::string to_hex(std::span<const std::uint8_t> bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (auto b : bytes) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

bool from_hex(const std::string& text, std::span<std::uint8_t> out) {
  if (text.size() != out.size() * 2) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(text[2 * i]), lo = nibble(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = std::uint8_t(hi << 4 | lo);
  }
  return true;
}

std::string mode_text(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", unsigned(mode & 07777));
  return text;
}

// The directory must be ours and closed to others: whoever can write in it can replace the
// state file (and so the secret we send) or plant links. Created 0700; refused (with a warning
// and no state kept) if owned by another user or writable by group or others.
bool prepare_directory(const std::string& dir) {
  std::filesystem::path path = std::filesystem::path(dir).lexically_normal();
  if (!path.has_filename()) path = path.parent_path();  // "dir/" names dir
  std::error_code ec;
  if (const auto parent = path.parent_path(); !parent.empty() && parent != path)
    std::filesystem::create_directories(parent, ec);
  if (ec || (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)) {
    spdlog::warn("cannot create state directory {}: {}; the address will not be kept", dir,
                 ec ? ec.message() : std::strerror(errno));
    return false;
  }
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0) {
    spdlog::warn("cannot open state directory {}: {}; the address will not be kept", dir,
                 std::strerror(errno));
    if (fd >= 0) ::close(fd);
    return false;
  }
  bool usable = false;
  if (st.st_uid != ::geteuid()) {
    spdlog::warn(
        "state directory {} belongs to uid {}, not to this user (uid {}); the address will not "
        "be kept",
        dir, st.st_uid, ::geteuid());
  } else if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    spdlog::warn(
        "state directory {} is writable by group or others (mode {}), who could replace the "
        "state file; run chmod 700 {}; the address will not be kept",
        dir, mode_text(st.st_mode), dir);
  } else if ((st.st_mode & 077) && ::fchmod(fd, 0700) != 0) {
    spdlog::warn("fchmod 0700 on state directory {}: {}; the address will not be kept", dir,
                 std::strerror(errno));
  } else {
    usable = true;
  }
  ::close(fd);
  return usable;
}

}  // namespace

state_file::state_file(std::string dir, const std::string& key) : dir_(std::move(dir)) {
  if (dir_.empty()) return;
  // The key holds the server address and more; a hash (FNV-1a, stable across builds) keeps the
  // file name short and safe.
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : key) hash = (hash ^ c) * 0x100000001b3ULL;
  char name[40];
  std::snprintf(name, sizeof(name), "tunnel-%016llx.json", static_cast<unsigned long long>(hash));
  path_ = dir_ + "/" + name;

  if (!prepare_directory(dir_)) {
    path_.clear();
    return;
  }
  const auto lock_path = path_ + ".lock";
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (lock_fd_ < 0 || ::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      spdlog::info(
          "another culvert with the same arguments is running; this one gets an "
          "address of its own and does not save it");
    else
      spdlog::warn("cannot lock {}: {}; the address will not be kept", lock_path,
                   std::strerror(errno));
    path_.clear();
  }
}

state_file::~state_file() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

std::optional<saved_tunnel> state_file::load() const {
  if (path_.empty()) return std::nullopt;
  std::ifstream in(path_);
  if (!in) return std::nullopt;
  try {
    auto json = nlohmann::json::parse(in);
    saved_tunnel saved;
    saved.tunnel_id = json.at("tunnel_id").get<std::uint64_t>();
    saved.domain = json.at("domain").get<std::string>();
    if (!from_hex(json.at("secret").get<std::string>(), saved.secret))
      throw std::runtime_error("bad secret");
    return saved;
  } catch (const std::exception& e) {
    spdlog::warn("ignoring unreadable state file {}: {}", path_, e.what());
    return std::nullopt;
  }
}

bool state_file::save(const saved_tunnel& saved) const {
  if (path_.empty()) return true;
  const nlohmann::json json = {
      {"tunnel_id", saved.tunnel_id}, {"secret", to_hex(saved.secret)}, {"domain", saved.domain}};
  const auto text = json.dump() + "\n";
  const auto temporary = path_ + ".tmp";
  // A leftover from a crash (or a planted link) is removed, never reused: O_EXCL | O_NOFOLLOW
  // create a new file or fail, so the secret never lands in a file someone else chose, and
  // fchmod sets 0600 whatever the umask.
  if (::unlink(temporary.c_str()) != 0 && errno != ENOENT) {
    spdlog::warn("unlink {}: {}", temporary, std::strerror(errno));
    return false;
  }
  const int fd =
      ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    spdlog::warn("open {}: {}", temporary, std::strerror(errno));
    return false;
  }
  const char* failed = nullptr;
  if (::fchmod(fd, 0600) != 0) failed = "fchmod";
  for (std::size_t done = 0; !failed && done < text.size();) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      failed = "write";
    else
      done += std::size_t(n);
  }
  if (::close(fd) != 0 && !failed) failed = "close";
  if (!failed && ::rename(temporary.c_str(), path_.c_str()) != 0) failed = "rename";
  if (failed) {
    spdlog::warn("writing {}: {}: {}", path_, failed, std::strerror(errno));
    ::unlink(temporary.c_str());
    return false;
  }
  return true;
}

}  // namespace culvert::client
