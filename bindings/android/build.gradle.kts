// The Tidings SDK as an Android library (AAR). The native libraries and the Kotlin
// sources are produced by scripts/build-android.sh (cargo-ndk + uniffi-bindgen):
//   src/main/jniLibs/{arm64-v8a,armeabi-v7a,x86_64,x86}/libtidings_bindings.so
//   src/main/java/io/tidings/sdk/tidings_core.kt
// Both are build outputs (bindings/android/.gitignore).
plugins {
    id("com.android.library") version "8.5.2"
    id("org.jetbrains.kotlin.android") version "2.0.20"
}

android {
    namespace = "io.tidings.sdk"
    compileSdk = 34
    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
    // The .so files come prebuilt from cargo-ndk; do not let AGP look for CMake/ndk-build.
    sourceSets["main"].jniLibs.srcDirs("src/main/jniLibs")
}

dependencies {
    // uniffi's Kotlin calls the library through JNA; the @aar carries JNA's own .so files.
    implementation("net.java.dev.jna:jna:5.14.0@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-core:1.8.1")
}
