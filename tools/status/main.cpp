// culvert-status: prints the tunnels of a running culvert supervisor, read-only, from its
// shared-memory table. Run by the operator, as any user; it never signals or writes anything.
#include <CLI/CLI.hpp>
#include <iostream>

#include "tools/status/status_report.hpp"

int main(int argc, char** argv) {
  culvert::tools::status_options options;
  CLI::App app{
      "culvert-status: shows the tunnels of a running culvert supervisor.\n"
      "Exit status: 0 on success, 1 if no readable table exists (or its supervisor has died), "
      "2 on a usage error."};
  app.add_option("--instance", options.instance,
                 "Supervisor instance to inspect; its table is the shared-memory segment "
                 "/culvert-<instance>")
      ->capture_default_str();
  app.add_flag("--json", options.json, "Print JSON instead of a table");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help is a ParseError too, with exit code 0.
    return app.exit(e) == 0 ? 0 : 2;
  }
  return culvert::tools::run_status(options, std::cout, std::cerr);
}
