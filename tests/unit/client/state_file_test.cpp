// The client's state file keeps its secret to its owner: a link planted at the temporary path
// is not followed, a leftover temporary file does not pass its mode on, and a directory that
// belongs to someone else or that others may write is not used at all.
#include "client/state_file.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/support/skip.hpp"

namespace fs = std::filesystem;
using culvert::client::saved_tunnel;
using culvert::client::state_file;

namespace {

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string pattern = (fs::temp_directory_path() / "culvert-state-XXXXXX").string();
    path = ::mkdtemp(pattern.data());
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

saved_tunnel sample() {
  saved_tunnel t;
  t.tunnel_id = 42;
  t.secret.fill(0xab);
  t.domain = "brave-otter-42.localhost";
  return t;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

unsigned mode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::lstat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

}  // namespace

TEST_CASE("state file: a link planted at the temporary path is not followed", "[state]") {
  temp_dir dir;
  const auto victim = dir.path / "victim";
  std::ofstream(victim) << "precious\n";
  const state_file state((dir.path / "state").string(), "key");
  REQUIRE_FALSE(state.path().empty());
  fs::create_symlink(victim, state.path() + ".tmp");

  CHECK(state.save(sample()));
  CHECK(read_text(victim) == "precious\n");
  CHECK_FALSE(fs::is_symlink(state.path()));
  CHECK(mode_of(state.path()) == 0600);
  const auto loaded = state.load();
  REQUIRE(loaded);
  CHECK(loaded->tunnel_id == 42);
}

TEST_CASE("state file: a leftover temporary file does not pass its mode on", "[state]") {
  temp_dir dir;
  const state_file state((dir.path / "state").string(), "key");
  REQUIRE_FALSE(state.path().empty());
  const auto leftover = state.path() + ".tmp";
  std::ofstream(leftover) << "half-written";
  fs::permissions(leftover, fs::perms(0644));

  CHECK(state.save(sample()));
  CHECK(mode_of(state.path()) == 0600);
  CHECK_FALSE(fs::exists(leftover));
  CHECK(mode_of(dir.path / "state") == 0700);
}

TEST_CASE("state file: a directory others may write is not used", "[state]") {
  temp_dir dir;
  const auto shared_dir = dir.path / "state";
  fs::create_directory(shared_dir);
  fs::permissions(shared_dir, fs::perms(0775));
  const state_file state(shared_dir.string(), "key");
  CHECK(state.path().empty());
  CHECK(state.save(sample()));  // disabled: nothing written, nothing to report
  CHECK_FALSE(state.load());
  CHECK(fs::is_empty(shared_dir));
  CHECK(mode_of(shared_dir) == 0775);  // left as it was, not silently taken over
}

TEST_CASE("state file: a directory that belongs to another user is not used", "[state]") {
  if (!culvert::tests::running_as_root())
    return culvert::tests::skip("not root: cannot give a directory to another account");
  temp_dir dir;
  const auto theirs = dir.path / "state";
  fs::create_directory(theirs);
  fs::permissions(theirs, fs::perms(0700));
  REQUIRE(::chown(theirs.c_str(), 65534, 65534) == 0);
  const state_file state(theirs.string(), "key");
  CHECK(state.path().empty());
  CHECK_FALSE(state.load());
  CHECK(fs::is_empty(theirs));
}
