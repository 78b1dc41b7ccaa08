# The static factory-init, built with nixpkgs' pkgsStatic (musl).
#
#   pkgs.callPackage ./nixos/package.nix { }
#
# The sources and the version come from the repository's Makefile (its SRC list and VERSION), so
# this file does not need editing when a source file is added there. The libraries are nixpkgs'
# static builds with the same choices as src/deps/build.sh: libcryptsetup's crypto backend is
# nettle (ciphers through the kernel's AF_ALG, hence af_alg and algif_skcipher in the initrd),
# and tpm2-tss uses mbedTLS and calls the device TCTI directly (--enable-nodl; the TCTI loader
# would clash with the device TCTI in a static link).
{ lib, pkgsStatic }:

let
  inherit (pkgsStatic) stdenv;

  makefile = builtins.readFile ../Makefile;
  lines = lib.splitString "\n" makefile;

  # "VERSION := 0.1.0"
  version = lib.head (lib.concatMap
    (l: let m = builtins.match "VERSION := ([^ ]+)" l; in if m == null then [ ] else m) lines);

  # "SRC := a.c b.c \" and its continuation lines.
  srcFiles =
    let
      # the SRC line, then each line after one that ends in a backslash
      collect = ls:
        if ls == [ ] then [ ]
        else [ (lib.head ls) ] ++ lib.optionals (lib.hasSuffix "\\" (lib.head ls)) (collect (lib.tail ls));
      fromSrc = ls:
        if ls == [ ] then [ ]
        else if lib.hasPrefix "SRC :=" (lib.head ls) then collect ls
        else fromSrc (lib.tail ls);
      text = lib.concatStringsSep " " (fromSrc lines);
      words = lib.filter (w: w != "" && w != "SRC" && w != ":=")
        (lib.splitString " " (lib.replaceStrings [ "\t" "\\" ] [ " " " " ] text));
    in
    if words == [ ] then throw "package.nix: no SRC := list in the Makefile" else words;

  src = builtins.path {
    name = "factory-init-src";
    path = ../src;
    # Only the top of src/: the C files, the headers and the manual page.
    filter = path: type:
      let base = baseNameOf path; in
      type == "regular" && dirOf path == toString ../src
      && (lib.hasSuffix ".c" base || lib.hasSuffix ".h" base || base == "factory-init.8");
  };

  cryptsetup = pkgsStatic.cryptsetup.overrideAttrs (old: {
    configureFlags = map
      (f: if f == "--with-crypto_backend=openssl" then "--with-crypto_backend=nettle" else f)
      old.configureFlags;
    # (pkgsStatic has made every build input a propagated one)
    propagatedBuildInputs = lib.remove pkgsStatic.openssl old.propagatedBuildInputs
      ++ [ pkgsStatic.nettle ];
  });

  # As src/deps/build.sh: with --enable-nodl, esys embeds the TCTI loader, which calls every
  # TCTI built in; only the device TCTI is (the TCTI archives all define Tss2_Tcti_Info).
  tpm2-tss = pkgsStatic.tpm2-tss.overrideAttrs (old: {
    propagatedBuildInputs = lib.subtractLists
      [ pkgsStatic.openssl pkgsStatic.curl pkgsStatic.libgcrypt ] old.propagatedBuildInputs
      ++ [ pkgsStatic.mbedtls_2 ];
    configureFlags = (old.configureFlags or [ ]) ++ [
      "--with-crypto=mbed" "--enable-nodl" "--disable-fapi" "--disable-policy"
      "--disable-tcti-mssim" "--disable-tcti-swtpm" "--disable-tcti-pcap"
      "--disable-tcti-libtpms" "--disable-tcti-cmd" "--disable-tcti-spi-helper"
      "--disable-tcti-spi-ltt2go" "--disable-tcti-spidev" "--disable-tcti-spi-ftdi"
      "--disable-tcti-i2c-helper" "--disable-tcti-i2c-ftdi" "--disable-doxygen-doc"
    ];
    postInstall = "rm -rf $out/lib/udev";
  });

  # The link order of src/deps/build.sh's static-ldflags; the group makes it order-proof.
  libs = [
    "-lmount" "-lcryptsetup" "-luuid" "-lnettle" "-largon2" "-lblkid" "-ldevmapper"
    "-lkmod" "-lzstd" "-llzma" "-lz"
    "-ltss2-esys" "-lmbedcrypto" "-ltss2-tcti-device" "-ltss2-sys" "-ltss2-mu" "-ltss2-rc"
    "-ljson-c" "-lpthread" "-lm"
  ];

  # The Makefile's STATIC_CFLAGS without -Werror: a newer compiler's new warning should not
  # stop a NixOS build.
  cflags = [
    "-Os" "-std=gnu17" "-Wall" "-Wextra" "-Wshadow" "-Wformat=2" "-Wstrict-prototypes"
    "-Wmissing-prototypes" "-Wno-missing-field-initializers" "-Wno-format-truncation"
    "-DFACTORY_INIT_VERSION=\"${version}\"" "-D_FILE_OFFSET_BITS=64"
    "-ffunction-sections" "-fdata-sections"
  ];
in
stdenv.mkDerivation {
  pname = "factory-init";
  inherit version src;

  nativeBuildInputs = [ pkgsStatic.buildPackages.nukeReferences ];
  buildInputs = [
    pkgsStatic.util-linuxMinimal # libblkid, libmount, libuuid
    cryptsetup
    pkgsStatic.lvm2 # libdevmapper only, in pkgsStatic
    pkgsStatic.kmod
    pkgsStatic.json_c
    tpm2-tss
    pkgsStatic.mbedtls_2
    pkgsStatic.nettle
    pkgsStatic.libargon2
    pkgsStatic.zstd
    pkgsStatic.xz
    pkgsStatic.zlib
  ];

  dontConfigure = true;

  buildPhase = ''
    runHook preBuild
    $CC ${lib.escapeShellArgs cflags} -static -Wl,--gc-sections -o factory-init \
      ${lib.escapeShellArgs srcFiles} \
      -Wl,--start-group ${lib.concatStringsSep " " libs} -Wl,--end-group
    runHook postBuild
  '';

  installPhase = ''
    runHook preInstall
    install -Dm755 factory-init $out/bin/factory-init
    install -Dm644 factory-init.8 $out/share/man/man8/factory-init.8
    runHook postInstall
  '';

  # A static binary for an initrd: no store path may stay referenced (the scripted initrd's
  # extra-utils nukes them anyway; the systemd initrd would copy whatever is referenced).
  # pkgsStatic turns buildInputs into propagated ones (for static libraries' users), recorded
  # in nix-support: a program needs none of them.
  postFixup = ''
    nuke-refs $out/bin/factory-init
    rm -rf $out/nix-support
  '';
  allowedReferences = [ ];

  passthru = {
    inherit srcFiles;
    # vm.store= values this source tree implements (bind arrived with src/seed.c).
    storeModes = [ "overlay" "off" ] ++ lib.optional (lib.elem "seed.c" srcFiles) "bind";
    # the vm.* keys this source tree knows: src/config.c's table ({"name", VM_KEY_...})
    configKeys = lib.concatMap (m: if lib.isList m then m else [ ])
      (builtins.split "\\{\"([a-z0-9.]+)\", VM_KEY_" (builtins.readFile ../src/config.c));
  };

  meta = {
    description = "Static stage-1 init for factory VMs: LUKS2+Btrfs /persist, overlay /nix, vm.* config";
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
    mainProgram = "factory-init";
  };
}
