// swift-tools-version:5.9
// The Tidings SDK for Apple platforms as a Swift package. Its two inputs are produced by
// scripts/build-xcframework.sh on macOS with Xcode (they are build outputs, not in git):
//   bindings/apple/TidingsSDKFFI.xcframework     the static library + C header + modulemap
//   bindings/apple/Sources/TidingsSDK/TidingsSDK.swift   uniffi's generated Swift
// The script checks that these paths are the ones named here.
import PackageDescription

let package = Package(
    name: "TidingsSDK",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "TidingsSDK", targets: ["TidingsSDK"]),
    ],
    targets: [
        .binaryTarget(name: "TidingsSDKFFI", path: "bindings/apple/TidingsSDKFFI.xcframework"),
        .target(
            name: "TidingsSDK",
            dependencies: ["TidingsSDKFFI"],
            path: "bindings/apple/Sources/TidingsSDK"
        ),
    ]
)
